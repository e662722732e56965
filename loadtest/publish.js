// k6 scenario "publish": publishers only — publish throughput and latency (http_req_duration).
// A failed publish counts as a lost message. Parameters and thresholds: scenarios.json, shared
// with `pgpush-loadgen run publish`.
import { publishNext, scenarioOptions } from './lib/common.js';

const NAME = 'publish';
export const options = scenarioOptions(NAME);

export function subscribe() {}

export function publish() {
  publishNext(NAME);
}
