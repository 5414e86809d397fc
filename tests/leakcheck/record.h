// The producer side of the leak check (tests/integration/README.md, "Leak check"): tests that start
// rewrapd keep its logs and audit files in a collection directory, and every test that seals a
// plaintext (or makes a PIN or a PFX password) records it there, so that the ctest entry
// no_secrets_in_logs can search every log for every secret after the whole run.
//
// Collection is on when ctest runs the test through tests/leakcheck/collect.sh, which sets
// HSMREWRAP_LEAKCHECK_DIR (the collection root) and HSMREWRAP_LEAKCHECK_TEST (the ctest
// name). Layout, per ctest entry: ROOT/TEST/ran (written by collect.sh),
// ROOT/TEST/secrets-PID.hex (one secret a line, hex), ROOT/TEST/logs/PID-N-LABEL/ (files
// of one rewrapd), ROOT/TEST/skipped (why nothing ran). Off (run by hand): every call here
// is a no-op and LogDir() is "".
#pragma once

#include <string>
#include <string_view>

namespace hsmrewrap::leakcheck {

// True when the collection is on.
bool Enabled();

// A new, empty directory for the files of one rewrapd (its stderr, stdout and audit log);
// "" when off or if it cannot be made.
std::string NewLogDir(const std::string& label);

// Records a secret (any bytes) that must never appear in a log. Thread-safe; a secret
// recorded twice is written once.
void RecordSecret(std::string_view secret);

// Says that the test ran nothing (e.g. its token is not installed), so that the check
// does not count it as a test whose collection broke.
void MarkSkipped(const std::string& why);

}  // namespace hsmrewrap::leakcheck
