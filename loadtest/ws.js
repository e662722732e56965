// k6 scenario "ws": WebSocket subscribers (native protocol) receive a steady publish stream.
// Parameters (env) and thresholds: scenarios.json, shared with `pgpush-loadgen run ws`.
//   k6 run -e TARGET_URL=http://127.0.0.1:8080 -e CONNECTIONS=1000 loadtest/ws.js
import ws from 'k6/ws';
import { Tally, channelOf, connectFailures, holdMillis, param, publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'ws';
export const options = scenarioOptions(NAME);

export function subscribe() {
  const base = param('TARGET_URL', NAME).replace(/^http/, 'ws');
  const tally = new Tally();
  const response = ws.connect(`${base}/v1/ws?channel=${channelOf(__VU, NAME)}`, null, (socket) => {
    socket.on('message', (text) => {
      const frame = JSON.parse(text);
      if (frame.type === 'message') tally.record(frame.data);
    });
    socket.setTimeout(() => socket.close(), holdMillis(NAME));
  });
  connectFailures.add(!response || response.status !== 101);
}

export function publish() {
  publishNext(NAME);
}
