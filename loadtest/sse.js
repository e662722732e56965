// k6 scenario "sse": Server-Sent Events subscribers receive a steady publish stream.
// k6 has no EventSource of its own: build k6 with the xk6-sse extension
// (xk6 build --with github.com/phymbert/xk6-sse). Parameters and thresholds: scenarios.json,
// shared with `pgpush-loadgen run sse`.
import sse from 'k6/x/sse';
import { Tally, channelOf, connectFailures, holdMillis, param, publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'sse';
export const options = scenarioOptions(NAME);

export function subscribe() {
  const tally = new Tally();
  const started = Date.now();
  const response = sse.open(`${param('TARGET_URL', NAME)}/v1/sse?channel=${channelOf(__VU, NAME)}`, {}, (client) => {
    client.on('event', (event) => {
      if (event.name === 'message') tally.record(JSON.parse(event.data).data);
      if (Date.now() - started > holdMillis(NAME)) client.close();
    });
  });
  connectFailures.add(!response || response.status !== 200);
}

export function publish() {
  publishNext(NAME);
}
