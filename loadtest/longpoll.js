// k6 scenario "longpoll": long-poll clients (/v1/poll with a cursor) receive a steady stream.
// Parameters and thresholds: scenarios.json, shared with `pgpush-loadgen run longpoll`.
import http from 'k6/http';
import { Tally, channelOf, connectFailures, holdMillis, param, publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'longpoll';
export const options = scenarioOptions(NAME);

export function subscribe() {
  const base = `${param('TARGET_URL', NAME)}/v1/poll?channel=${channelOf(__VU, NAME)}`;
  const first = http.get(base);
  connectFailures.add(first.status !== 200);
  if (first.status !== 200) return;
  let cursor = first.json('cursor');
  const tally = new Tally();
  const until = Date.now() + holdMillis(NAME);
  while (Date.now() < until) {
    const answer = http.get(`${base}&cursor=${encodeURIComponent(cursor)}&wait=25`, { timeout: '40s' });
    if (answer.status !== 200) continue;
    for (const message of answer.json('messages')) tally.record(message.data);
    cursor = answer.json('cursor');
  }
}

export function publish() {
  publishNext(NAME);
}
