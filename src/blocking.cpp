// run_blocking is a template in blocking.hpp; this unit keeps the header compiled on its own.
#include "mxhook/blocking.hpp"
