// Shared by every k6 script: the scenario's parameters and thresholds come from
// ../scenarios.json, the same file pgpush-loadgen embeds, so both tools run the same scenarios.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';

const manifest = JSON.parse(open('../scenarios.json'));

export const lost = new Counter('lost_messages');
export const duplicates = new Counter('duplicate_messages');
export const reordered = new Counter('reordered_messages');
export const delivered = new Counter('delivered_messages');
export const connectFailures = new Rate('connect_failures');
export const latency = new Trend('delivery_latency', true);

/** The scenario's parameter, overridden by the environment variable of the same name. */
export function param(name, scenario) {
  const value = __ENV[name];
  return value !== undefined ? value : String(manifest[scenario].parameters[name]);
}

/** k6 options: subscribers hold their connection for the duration while publishers publish. */
export function scenarioOptions(name) {
  const t = manifest[name].thresholds;
  const connections = Number(param('CONNECTIONS', name));
  const duration = param('DURATION', name);
  const scenarios = {
    publisher: {
      executor: 'constant-arrival-rate',
      exec: 'publish',
      rate: Number(param('RATE', name)),
      timeUnit: '1s',
      duration,
      startTime: '5s',
      preAllocatedVUs: 20,
    },
  };
  if (connections > 0) {
    scenarios.subscribers = {
      executor: 'per-vu-iterations',
      exec: 'subscribe',
      vus: connections,
      iterations: 1,
      maxDuration: `${parseDuration(duration) + 30}s`,
    };
  }
  const thresholds = {
    lost_messages: [`count<=${t.lost}`],
    duplicate_messages: [`count<=${t.duplicates}`],
    reordered_messages: [`count<=${t.reordered}`],
    connect_failures: [`rate<=${t.connect_failure_ratio}`],
  };
  if (t.p99_ms > 0) {
    thresholds.delivery_latency = [`p(99)<${t.p99_ms}`];
  }
  return { scenarios, thresholds };
}

/** Seconds in a "30s" / "2m" duration. */
export function parseDuration(text) {
  const match = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (!match) return 30;
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2]];
  return Number(match[1]) * unit;
}

/** The channel of subscriber `vu` (VUs count from 1), as pgpush-loadgen numbers them. */
export function channelOf(vu, scenario) {
  return `lg-${(vu - 1) % Number(param('CHANNELS', scenario))}`;
}

/**
 * Publishes the next message. Message n (unique across publisher VUs) goes to channel n mod C
 * with {"seq": n div C + 1, "t": <ms>}, so a channel's subscriber sees seq 1, 2, 3... and a gap
 * is a lost message.
 */
export function publishNext(scenario) {
  const channels = Number(param('CHANNELS', scenario));
  const n = exec.scenario.iterationInTest;
  const channel = `lg-${n % channels}`;
  const payload = JSON.stringify({ seq: Math.floor(n / channels) + 1, t: Date.now() });
  const via = param('PUBLISH_VIA', scenario);
  const mode = via === 'http-ephemeral' ? '?mode=ephemeral' : '';
  const response = http.post(`${param('TARGET_URL', scenario)}/v1/publish/${channel}${mode}`, payload);
  if (response.status !== 200) {
    lost.add(1);
  }
}

/** Per-subscriber bookkeeping of sequence numbers: gaps are losses. */
export class Tally {
  constructor() {
    this.last = 0;
    this.seen = new Set();
  }

  /** Records a delivered payload (the object the publisher sent). */
  record(stamp) {
    if (!stamp || typeof stamp.seq !== 'number') return;
    latency.add(Date.now() - stamp.t);
    if (this.seen.has(stamp.seq)) {
      duplicates.add(1);
      return;
    }
    this.seen.add(stamp.seq);
    delivered.add(1);
    if (stamp.seq < this.last) {
      reordered.add(1);
    } else if (this.last > 0 && stamp.seq > this.last + 1) {
      lost.add(stamp.seq - this.last - 1);
    }
    this.last = Math.max(this.last, stamp.seq);
  }
}

/** How long a subscriber stays: the publishing window plus a margin to drain. */
export function holdMillis(scenario) {
  return (parseDuration(param('DURATION', scenario)) + 10) * 1000;
}
