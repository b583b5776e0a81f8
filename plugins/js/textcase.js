// textcase-js: the JavaScript implementation of textcase.
//
// Every supported language implements the same plugin; the golden table in
// plugins/golden/textcase.json and docs/PLUGINS.md give the behaviour.
// Built with componentize-js (see docs/PLUGINS.md); the WIT names map to
// camelCase, enums to their kebab-case strings, and a thrown plain object
// becomes the `err` of a `result`.
import { log, getConfig } from 'kiln:plugin/host-api@0.1.0';

const MODES = ['upper', 'lower', 'title', 'snake'];

// A word: a maximal run of anything but the contract's whitespace, which is
// space, tab, LF, FF and CR (not /\s/, which also matches U+3000, U+00A0
// and more).
const WORD = /[^ \t\n\f\r]+/g;

// First character (a code point, not a UTF-16 unit) uppercased, the rest lowercased.
function titleWord(word) {
  const first = String.fromCodePoint(word.codePointAt(0));
  return first.toUpperCase() + word.slice(first.length).toLowerCase();
}

// The text is scanned by the regular-expression engine and the case
// built-ins, never character by character in JavaScript: inside wasm,
// SpiderMonkey interprets JavaScript (no JIT), while its built-ins are
// compiled code. A per-character loop here cost 4 times the whole job
// (docs/PLUGINS.md, "Writing a fast JavaScript plugin").
export const plugin = {
  getName() {
    return 'textcase-js';
  },
  getVersion() {
    return '1.0.0';
  },
  process(input) {
    const mode = getConfig('mode') ?? 'title';
    if (!MODES.includes(mode)) {
      throw {
        kind: 'unsupported-format',
        message: `unsupported mode: ${mode} (expected upper, lower, title or snake)`,
      };
    }
    if (input === '') {
      throw { kind: 'invalid-input', message: 'empty input' };
    }
    const words = input.match(WORD) ?? [];
    let output;
    if (mode === 'upper') output = input.toUpperCase();
    else if (mode === 'lower') output = input.toLowerCase();
    else if (mode === 'snake') output = words.join('_').toLowerCase();
    else output = input.replace(WORD, titleWord);
    log('info', `textcase: mode=${mode} words=${words.length}`);
    return { output, metadata: [{ key: 'words', value: String(words.length) }] };
  },
};
