// k6 scenario "cluster": mixed clients against a cluster behind nginx — half WebSocket, the
// rest long poll and Hippie WebSocket (SSE needs the xk6-sse build; see sse.js). Parameters and
// thresholds: scenarios.json, shared with `pgpush-loadgen run cluster`.
import http from 'k6/http';
import ws from 'k6/ws';
import { Tally, channelOf, connectFailures, holdMillis, param, publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'cluster';
export const options = scenarioOptions(NAME);

export function subscribe() {
  const channel = channelOf(__VU, NAME);
  const tally = new Tally();
  const base = param('TARGET_URL', NAME);
  const kind = __VU % 10;
  if (kind < 5 || kind >= 8) {
    const path = kind < 5 ? `/v1/ws?channel=${channel}` : `/_hippie/ws/${channel}`;
    const response = ws.connect(`${base.replace(/^http/, 'ws')}${path}`, null, (socket) => {
      socket.on('message', (text) => {
        const frame = JSON.parse(text);
        tally.record(frame.type === 'message' ? frame.data : frame);
      });
      socket.setTimeout(() => socket.close(), holdMillis(NAME));
    });
    connectFailures.add(!response || response.status !== 101);
    return;
  }
  const poll = `${base}/v1/poll?channel=${channel}`;
  const first = http.get(poll);
  connectFailures.add(first.status !== 200);
  if (first.status !== 200) return;
  let cursor = first.json('cursor');
  const until = Date.now() + holdMillis(NAME);
  while (Date.now() < until) {
    const answer = http.get(`${poll}&cursor=${encodeURIComponent(cursor)}&wait=25`, { timeout: '40s' });
    if (answer.status !== 200) continue;
    for (const message of answer.json('messages')) tally.record(message.data);
    cursor = answer.json('cursor');
  }
}

export function publish() {
  publishNext(NAME);
}
