/* weft — umbrella header: includes every public module header that was
 * built (the protocol modules are optional meson features). */
#ifndef WEFT_WEFT_H
#define WEFT_WEFT_H

#include <weft/loop.h>
#include <weft/req.h>
#include <weft/sock.h>
#include <weft/fdpass.h>

#if defined(__has_include)
#if __has_include(<weft/assuan.h>) && __has_include(<gpg-error.h>)
#include <weft/assuan.h>
#endif
#if __has_include(<weft/tls.h>) && __has_include(<gnutls/gnutls.h>)
#include <weft/tls.h>
#endif
#endif

#endif
