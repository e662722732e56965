// k6 scenario "hippie": clients of the original Hippie protocol receive a steady stream.
// k6 cannot read an endless multipart response, so where pgpush-loadgen uses MXHR this script
// uses the Hippie WebSocket route; the parameters and thresholds are the same (scenarios.json).
import ws from 'k6/ws';
import { Tally, channelOf, connectFailures, holdMillis, param, publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'hippie';
export const options = scenarioOptions(NAME);

export function subscribe() {
  const base = param('TARGET_URL', NAME).replace(/^http/, 'ws');
  const tally = new Tally();
  const response = ws.connect(`${base}/_hippie/ws/${channelOf(__VU, NAME)}`, null, (socket) => {
    socket.on('message', (text) => {
      const message = JSON.parse(text);
      if (typeof message.seq === 'number') tally.record(message);
    });
    socket.setTimeout(() => socket.close(), holdMillis(NAME));
  });
  connectFailures.add(!response || response.status !== 101);
}

export function publish() {
  publishNext(NAME);
}
