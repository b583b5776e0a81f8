// textcase-c: the C implementation of textcase.
//
// Every supported language implements the same plugin; the golden table in
// plugins/golden/textcase.json and docs/PLUGINS.md give the behaviour.
// Bindings come from `wit-bindgen c --world text-plugin` (text_plugin.h);
// see docs/PLUGINS.md for the build. Case mapping is wasi-libc's
// towupper/towlower, code point by code point: Unicode *simple* case
// mapping, so no `ß` → `SS` and no final sigma (a documented limitation).
//
// Ownership, as wit-bindgen's C generator defines it: the `input` argument
// belongs to us (we free it); what we put in `ret`/`err` is malloc'ed and
// freed by the generated post-return function; the string `get_config`
// returns is ours to free; `log` only borrows its message.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wctype.h>

#include "text_plugin.h"

// A growable byte buffer; every allocation failure aborts (a trap), which
// the host reports as a typed `trap`.
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + extra) cap *= 2;
  b->ptr = realloc(b->ptr, cap);
  if (!b->ptr) abort();
  b->cap = cap;
}

static void buf_push(buf_t *b, uint32_t cp) {
  buf_reserve(b, 4);
  uint8_t *p = b->ptr + b->len;
  if (cp < 0x80) {
    p[0] = (uint8_t)cp;
    b->len += 1;
  } else if (cp < 0x800) {
    p[0] = (uint8_t)(0xC0 | (cp >> 6));
    p[1] = (uint8_t)(0x80 | (cp & 0x3F));
    b->len += 2;
  } else if (cp < 0x10000) {
    p[0] = (uint8_t)(0xE0 | (cp >> 12));
    p[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    p[2] = (uint8_t)(0x80 | (cp & 0x3F));
    b->len += 3;
  } else {
    p[0] = (uint8_t)(0xF0 | (cp >> 18));
    p[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    p[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    p[3] = (uint8_t)(0x80 | (cp & 0x3F));
    b->len += 4;
  }
}

// Decodes the code point at s[*i] and advances *i. The component model
// guarantees valid UTF-8 in a `string`, so no error path is needed.
static uint32_t next_cp(const uint8_t *s, size_t *i) {
  uint8_t c = s[*i];
  if (c < 0x80) {
    *i += 1;
    return c;
  }
  if (c < 0xE0) {
    uint32_t cp = ((uint32_t)(c & 0x1F) << 6) | (s[*i + 1] & 0x3F);
    *i += 2;
    return cp;
  }
  if (c < 0xF0) {
    uint32_t cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[*i + 1] & 0x3F) << 6) |
                  (s[*i + 2] & 0x3F);
    *i += 3;
    return cp;
  }
  uint32_t cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3F) << 12) |
                ((uint32_t)(s[*i + 2] & 0x3F) << 6) | (s[*i + 3] & 0x3F);
  *i += 4;
  return cp;
}

// The contract's whitespace: space, tab, LF, FF and CR.
static bool is_space(uint32_t cp) {
  return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\f' || cp == '\r';
}

enum mode { UPPER, LOWER, TITLE, SNAKE };

static void set_error(exports_kiln_plugin_plugin_process_error_t *err, uint8_t kind,
                      const char *msg, size_t len) {
  err->kind = kind;
  text_plugin_string_dup_n(&err->message, msg, len);
}

void exports_kiln_plugin_plugin_get_name(text_plugin_string_t *ret) {
  text_plugin_string_dup(ret, "textcase-c");
}

void exports_kiln_plugin_plugin_get_version(text_plugin_string_t *ret) {
  text_plugin_string_dup(ret, "1.0.0");
}

bool exports_kiln_plugin_plugin_process(text_plugin_string_t *input,
                                        exports_kiln_plugin_plugin_process_result_t *ret,
                                        exports_kiln_plugin_plugin_process_error_t *err) {
  text_plugin_string_t key, value;
  text_plugin_string_set(&key, "mode");
  bool has_mode = kiln_plugin_host_api_get_config(&key, &value);
  enum mode mode = TITLE;
  const char *mode_name = "title";
  if (has_mode) {
    static const char *names[] = {"upper", "lower", "title", "snake"};
    bool found = false;
    for (int m = 0; m < 4; m++) {
      if (value.len == strlen(names[m]) && memcmp(value.ptr, names[m], value.len) == 0) {
        mode = (enum mode)m;
        mode_name = names[m];
        found = true;
      }
    }
    if (!found) {
      buf_t msg = {0};
      static const char head[] = "unsupported mode: ";
      static const char tail[] = " (expected upper, lower, title or snake)";
      buf_reserve(&msg, sizeof head + value.len + sizeof tail);
      memcpy(msg.ptr, head, sizeof head - 1);
      memcpy(msg.ptr + sizeof head - 1, value.ptr, value.len);
      memcpy(msg.ptr + sizeof head - 1 + value.len, tail, sizeof tail - 1);
      set_error(err, KILN_PLUGIN_TYPES_ERROR_KIND_UNSUPPORTED_FORMAT, (const char *)msg.ptr,
                sizeof head - 1 + value.len + sizeof tail - 1);
      free(msg.ptr);
      text_plugin_string_free(&value);
      text_plugin_string_free(input);
      return false;
    }
    text_plugin_string_free(&value);
  }
  if (input->len == 0) {
    set_error(err, KILN_PLUGIN_TYPES_ERROR_KIND_INVALID_INPUT, "empty input", 11);
    text_plugin_string_free(input);
    return false;
  }

  buf_t out = {0};
  buf_reserve(&out, input->len + 4);
  size_t words = 0;
  bool in_word = false;  // the previous code point was part of a word
  size_t i = 0;
  while (i < input->len) {
    uint32_t cp = next_cp(input->ptr, &i);
    if (is_space(cp)) {
      in_word = false;
      if (mode != SNAKE) buf_push(&out, cp);
      continue;
    }
    bool first = !in_word;
    in_word = true;
    if (first) {
      words++;
      if (mode == SNAKE && words > 1) buf_push(&out, '_');
    }
    switch (mode) {
      case UPPER:
        buf_push(&out, (uint32_t)towupper((wint_t)cp));
        break;
      case TITLE:
        buf_push(&out, (uint32_t)(first ? towupper((wint_t)cp) : towlower((wint_t)cp)));
        break;
      case LOWER:
      case SNAKE:
        buf_push(&out, (uint32_t)towlower((wint_t)cp));
        break;
    }
  }
  text_plugin_string_free(input);

  char line[64];
  int n = snprintf(line, sizeof line, "textcase: mode=%s words=%zu", mode_name, words);
  text_plugin_string_t msg = {(uint8_t *)line, (size_t)n};
  kiln_plugin_host_api_log(KILN_PLUGIN_HOST_API_LOG_LEVEL_INFO, &msg);

  char count[24];
  int m = snprintf(count, sizeof count, "%zu", words);
  ret->output.ptr = out.ptr;
  ret->output.len = out.len;
  ret->metadata.len = 1;
  ret->metadata.ptr = malloc(sizeof(kiln_plugin_types_key_value_t));
  if (!ret->metadata.ptr) abort();
  text_plugin_string_dup(&ret->metadata.ptr[0].key, "words");
  text_plugin_string_dup_n(&ret->metadata.ptr[0].value, count, (size_t)m);
  return true;
}
