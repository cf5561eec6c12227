/* libFuzzer target for the Assuan engine (src/assuan/codec.c): arbitrary
 * bytes go through line assembly in chunks the input chooses; every line is
 * decoded (strict and lenient), and every input is D-encoded and decoded
 * back, checking the round trip and libassuan's line-length bound.
 * Build and run: sh fuzz/run [seconds] */
#include "assuan-private.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void lines(const uint8_t *data, size_t size)
{
	struct weft__ain in = {0};
	char buf[4096];
	in.buf = buf;
	in.cap = sizeof(buf);
	size_t chunk = size ? (size_t)(data[0] % 37) + 1 : 1;
	size_t pos = 0;
	while (pos < size) {
		size_t room = weft__ain_compact(&in);
		size_t n = size - pos < chunk ? size - pos : chunk;
		if (n > room)
			n = room;
		assert(n > 0 || in.discarding || in.len >= WEFT_ASSUAN_LINELENGTH);
		memcpy(in.buf + in.len, data + pos, n);
		in.len += n;
		pos += n;
		char *line;
		size_t len;
		enum weft__aline k;
		while ((k = weft__ain_next(&in, &line, &len)) != WEFT__ALINE_NONE) {
			if (k != WEFT__ALINE_LINE)
				continue;
			assert(len + 1 <= WEFT_ASSUAN_LINELENGTH);
			assert(line[len] == '\0');
			assert(memchr(line, '\n', len) == NULL);
			char copy[WEFT_ASSUAN_LINELENGTH];
			memcpy(copy, line, len);
			ssize_t a = weft__adecode(copy, len, true);
			assert(a <= (ssize_t)len);
			char apart[WEFT_ASSUAN_LINELENGTH];
			assert(weft__adecode_to(apart, line, len, true) == a);
			memcpy(copy, line, len);
			ssize_t b = weft__adecode(copy, len, false);
			assert(b >= 0 && b <= (ssize_t)len);
			/* the block-wise decoder into another buffer agrees */
			assert(weft__adecode_to(apart, line, len, false) == b);
			assert(memcmp(apart, copy, (size_t)b) == 0);
		}
		/* The buffer never holds more than a line's worth without an LF. */
		assert(in.len < sizeof(buf));
	}
}

static void roundtrip(const uint8_t *data, size_t size)
{
	struct weft__abuf out = {0};
	size_t dcount = 0;
	/* In two calls, as a handler sending pieces would. */
	size_t half = size / 2;
	assert(weft__aenc_data(&out, &dcount, data, half) == 0);
	assert(weft__aenc_data(&out, &dcount, data + half, size - half) == 0);
	assert(weft__aenc_data_end(&out, &dcount) == 0);
	unsigned char *back = malloc(size + 1);
	size_t got = 0;
	size_t i = 0;
	while (i < out.len) {
		char *nl = memchr(out.p + i, '\n', out.len - i);
		assert(nl != NULL);
		size_t len = (size_t)(nl - (out.p + i));
		assert(len + 1 <= WEFT_ASSUAN_LINELENGTH);
		assert(len >= 2 && out.p[i] == 'D' && out.p[i + 1] == ' ');
		ssize_t n = weft__adecode(out.p + i + 2, len - 2, true);
		assert(n >= 0 && got + (size_t)n <= size);
		memcpy(back + got, out.p + i + 2, (size_t)n);
		got += (size_t)n;
		i += len + 1;
	}
	assert(got == size && (size == 0 || memcmp(back, data, size) == 0));
	free(back);
	weft__abuf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lines(data, size);
	roundtrip(data, size);
	return 0;
}
