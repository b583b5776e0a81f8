// enrich-js: the `enrich` example in JavaScript, over fetch().
//
// The input is a JSON object with an `id`. The plugin fetches `<url>/<id>`
// (config `url`), expects a JSON object back, and outputs the input with
// that object's `<field>` (config `field`, default `name`) merged in. A
// record without the field leaves the input as it is; a 404 is an
// `invalid-input` error. Built with componentize-js with its `http` feature
// on (see docs/PLUGINS.md), so fetch() is wasi:http and goes through the
// same outbound grants as a Rust plugin's requests: without a grant for
// the URL, fetch() rejects and the job fails with `internal-error`.
//
// Its manifest, enrich-js.toml:
//
//   name = "enrich-js"
//   version = "1.0.0"
//
//   [grants]
//   outbound = ["https://records.example.com"]
//
//   [config]
//   url = "https://records.example.com/v1/people"
//   field = "country"
import { getConfig } from 'kiln:plugin/host-api@0.1.0';

const fail = (kind, message) => {
  throw { kind, message };
};

export const plugin = {
  getName() {
    return 'enrich-js';
  },
  getVersion() {
    return '1.0.0';
  },
  // componentize-js runs the event loop until the promise settles, so the
  // export stays synchronous for the host.
  async process(input) {
    let record;
    try {
      record = JSON.parse(input);
    } catch (e) {
      fail('invalid-input', `not a JSON object: ${e.message}`);
    }
    if (record === null || typeof record !== 'object' || Array.isArray(record)) {
      fail('invalid-input', 'not a JSON object');
    }
    const id = record.id;
    if (typeof id !== 'string' && typeof id !== 'number') {
      fail('invalid-input', 'no string or number `id`');
    }
    const base = getConfig('url') ?? fail('internal-error', 'config `url` is not set');
    const field = getConfig('field') ?? 'name';
    const url = `${base.replace(/\/+$/, '')}/${id}`;
    let response;
    try {
      response = await fetch(url, { headers: { accept: 'application/json' } });
    } catch (e) {
      // A request no grant allows lands here (wasi:http's
      // HTTP-request-denied), as does a refused connection.
      fail('internal-error', `fetch ${url}: ${e}`);
    }
    if (response.status === 404) fail('invalid-input', `no record ${id}`);
    if (response.status !== 200) fail('internal-error', `${url}: status ${response.status}`);
    let fetched;
    try {
      fetched = await response.json();
    } catch (e) {
      fail('internal-error', `${url}: not JSON: ${e}`);
    }
    const merged = fetched !== null && typeof fetched === 'object' && field in fetched;
    if (merged) record[field] = fetched[field];
    return {
      output: JSON.stringify(record),
      metadata: [{ key: 'merged', value: String(merged) }],
    };
  },
};
