// Running a command from a test and collecting its output.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace hsmrewrap::test {

struct CommandResult {
  int exit_code = -1;  // exit status, or -1 if it did not exit normally / could not start
  std::string out;     // stdout
  std::string err;     // stderr (and start-up errors of ours)
  std::string Describe(const std::vector<std::string>& argv) const;
};

// Runs argv[0] (looked up in PATH) with the given stdin and, on top of the inherited
// environment, `env`; kills it after `timeout`. It dies with the test (PR_SET_PDEATHSIG).
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data = "",
                         std::chrono::seconds timeout = std::chrono::seconds(120),
                         const std::map<std::string, std::string>& env = {});

// The child's environment: the current one with `env` set on top ("K=V" strings).
std::vector<std::string> ChildEnvironment(const std::map<std::string, std::string>& env);
// argv as execve wants it: pointers into `args`, null-terminated.
std::vector<char*> CArgv(std::vector<std::string>& args);

}  // namespace hsmrewrap::test
