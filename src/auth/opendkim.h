#pragma once
// libopendkim's header for C++: it spells C's boolean `_Bool`, which C++ compilers
// (clang in strict mode) do not know.
#ifndef _Bool
#define MXHOOK_DEFINED_BOOL
#define _Bool bool
#endif
extern "C" {
#include <opendkim/dkim.h>
}
#ifdef MXHOOK_DEFINED_BOOL
#undef _Bool
#undef MXHOOK_DEFINED_BOOL
#endif
