// textcase-js: the JavaScript implementation of textcase.
//
// Every supported language implements the same plugin; the golden table in
// plugins/golden/textcase.json and docs/PLUGINS.md give the behaviour.
// Built with componentize-js (see docs/PLUGINS.md); the WIT names map to
// camelCase, enums to their kebab-case strings, and a thrown plain object
// becomes the `err` of a `result`.
import { log, getConfig } from 'kiln:plugin/host-api@0.1.0';

const MODES = ['upper', 'lower', 'title', 'snake'];

// The contract's whitespace: space, tab, LF, FF and CR (not /\s/, which
// also matches U+3000, U+00A0 and more).
const isSpace = (c) => c === ' ' || c === '\t' || c === '\n' || c === '\f' || c === '\r';

// The text split into alternating runs: [isWord, run].
function runs(text) {
  const out = [];
  let cur = '';
  let curWord = null;
  for (const c of text) {
    const word = !isSpace(c);
    if (curWord !== null && word !== curWord) {
      out.push([curWord, cur]);
      cur = '';
    }
    curWord = word;
    cur += c;
  }
  if (cur !== '') out.push([curWord, cur]);
  return out;
}

// First character (a code point, not a UTF-16 unit) uppercased, the rest lowercased.
function titleWord(word) {
  const first = String.fromCodePoint(word.codePointAt(0));
  return first.toUpperCase() + word.slice(first.length).toLowerCase();
}

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
    const parts = runs(input);
    const words = parts.filter(([word]) => word).map(([, run]) => run);
    let output;
    if (mode === 'upper') output = input.toUpperCase();
    else if (mode === 'lower') output = input.toLowerCase();
    else if (mode === 'snake') output = words.map((w) => w.toLowerCase()).join('_');
    else output = parts.map(([word, run]) => (word ? titleWord(run) : run)).join('');
    log('info', `textcase: mode=${mode} words=${words.length}`);
    return { output, metadata: [{ key: 'words', value: String(words.length) }] };
  },
};
