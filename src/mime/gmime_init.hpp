#pragma once
// GMime's one-time global set-up (its charset tables); g_mime_init itself is not
// thread-safe. Called before any other GMime use.

namespace mxhook::mime {
void init_gmime();
}
