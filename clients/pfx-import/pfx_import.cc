// pfx-import: dispatches to its commands (commands.h). Without a command the arguments are
// import's, as before the commands existed.
#include "clients/pfx-import/pfx_import.h"

#include <cstring>
#include <iostream>

#include "clients/pfx-import/commands.h"

namespace hsmrewrap::pfx_import {

int RunPfxImport(int argc, char** argv) {
  if (argc >= 2) {
    const char* command = argv[1];
    // The command's own parser sees "pfx-import COMMAND" as its program name.
    auto run = [&](int (*f)(int, char**)) { return f(argc - 1, argv + 1); };
    if (std::strcmp(command, "import") == 0) return run(RunImport);
    if (std::strcmp(command, "list") == 0) return run(RunList);
    if (std::strcmp(command, "remove") == 0) return run(RunRemove);
    if (std::strcmp(command, "update") == 0) return run(RunUpdate);
    if (command[0] != '-') {
      std::cerr << "pfx-import: unknown command '" << command
                << "' (import, list, remove, update; see pfx-import --help)\n";
      return kExitUsage;
    }
  }
  return RunImport(argc, argv);
}

}  // namespace hsmrewrap::pfx_import
