// pfx-import: see clients/pfx-import/pfx_import.h and docs/pfx-import.md.
#include "clients/pfx-import/pfx_import.h"

int main(int argc, char** argv) { return hsmrewrap::pfx_import::RunPfxImport(argc, argv); }
