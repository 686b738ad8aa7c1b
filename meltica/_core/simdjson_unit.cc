// simdjson's amalgamated implementation, from the pinned pysimdjson build
// requirement (its directory is on the include path; see setup.py).  Compiled
// into each module that uses simdjson, with that module's flags.
#include "simdjson.cpp"
