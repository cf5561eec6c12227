/* weft — umbrella header: includes every public module header. */
#ifndef WEFT_WEFT_H
#define WEFT_WEFT_H

#include <weft/loop.h>
#include <weft/req.h>
#include <weft/sock.h>

#endif
