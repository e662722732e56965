// Compiled (not run) by the browser tests: pgpush.d.ts must type a normal use of the client and
// reject misuse (each @ts-expect-error line must be an error).
import { PgPush, PgPushError, type PgPushMessage, type Transport } from '../../clients/js/pgpush.js';

const client = new PgPush({ url: 'http://127.0.0.1:8080', channels: ['chat'], transports: ['sse', 'poll'] });
const off: () => void = client.on('message', (message: PgPushMessage) => {
  const channel: string = message.channel;
  const cursor: string | undefined = message.cursor;
  console.log(channel, cursor, message.data);
});
off();
client.on('connected', ({ transport }) => {
  const name: Transport = transport;
  console.log(name);
});
client.on('disconnected', ({ code, retryInMs }) => console.log(code + retryInMs));
client.on('error', (error) => {
  const failure: PgPushError = error;
  console.log(failure.code, failure.reason, failure.status);
});
client.subscribe(['a', 'b']);
client.unsubscribe('a');
async function send(): Promise<string | undefined> {
  const { cursor } = await client.publish('chat', { text: 'hi', n: [1, 2, null] }, { mode: 'ephemeral' });
  return cursor;
}
void send();
const state: 'idle' | 'connecting' | 'connected' | 'closed' = client.state;
console.log(state, client.transport, client.cursor);
client.close();

// @ts-expect-error: not a transport
new PgPush({ transports: ['carrier-pigeon'] });
// @ts-expect-error: not an event
client.on('gone', () => {});
// @ts-expect-error: functions are not JSON
void client.publish('chat', () => 1);
// @ts-expect-error: not a mode
void client.publish('chat', 1, { mode: 'forever' });
const withToken = new PgPush({ channels: ['chat'], token: 'header.payload.signature' });
const withTokenFunction = new PgPush({ channels: ['chat'], token: async () => 'fresh.token.here' });
withToken.close();
withTokenFunction.close();
// @ts-expect-error a token is a string or a function giving one
new PgPush({ token: 42 });

// An application's own types: interfaces publish as they are, and type what it receives.
interface Order {
  id: number;
  items: string[];
  note?: string;
  shipping: { express: boolean; at: string | null };
}
const order: Order = { id: 1, items: ['tea'], shipping: { express: false, at: null } };
const orders = new PgPush<Order>({ channels: ['orders'] });
orders.on('message', (message) => {
  const id: number = message.data.id;
  console.log(id, message.data.items.length);
});
void orders.publish('orders', order);
client.on('message', (message) => {
  const received = message.data as Order;
  console.log(received.shipping.express);
});
interface WithCallback {
  id: number;
  done: () => void;
}
const callback: WithCallback = { id: 1, done: () => {} };
// @ts-expect-error a member JSON cannot carry
void orders.publish('orders', callback);
// @ts-expect-error bigints are not JSON
void orders.publish('orders', { n: 10n });

// Server-side filters: the map's viewport, and the combinators.
const viewport = new PgPush({
  channels: ['person_updated'],
  filter: { path: 'loc', op: 'within', value: [4.88, 52.36, 4.9, 52.38] },
});
viewport.setFilter({ and: [{ path: 'kind', op: 'in', value: ['a', 'b'] }, { not: { path: 'gone', op: 'exists' } }] });
viewport.setFilter(null);
void viewport.history('person_updated', { limit: 5, filter: { path: 'id', op: 'gt', value: 3 } });
// @ts-expect-error not an operator
viewport.setFilter({ path: 'id', op: 'near', value: 1 });
// @ts-expect-error a box has four numbers
viewport.setFilter({ path: 'loc', op: 'within', value: [1, 2, 3] });
