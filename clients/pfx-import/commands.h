// pfx-import's commands and the Graph sign-in flags they share.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "clients/pfx-import/auth.h"
#include "clients/pfx-import/graph.h"
#include "clients/pfx-import/http.h"

namespace hsmrewrap::pfx_import {

constexpr int kExitRowsFailed = 1, kExitUsage = 2, kExitStartup = 3, kExitInterrupted = 130;
constexpr char kGlobalGraph[] = "https://graph.microsoft.com/beta";
constexpr char kGlobalAuthority[] = "https://login.microsoftonline.com";

struct GraphFlags {
  std::string graph_url;  // empty: kGlobalGraph (import: no upload)
  std::string authority = kGlobalAuthority;
  std::string token_file;
  std::string tenant, client_id, client_secret_file, client_cert, client_key;
  double timeout_s = 30;
  // True when the admin asked for Graph in any way (URL, token file or app sign-in).
  bool Given() const {
    return !graph_url.empty() || !token_file.empty() || !tenant.empty() || !client_id.empty();
  }
};
// --graph-url, --authority, --token-file, --tenant, --client-id, --client-secret-file,
// --client-cert, --client-key (and --timeout when add_timeout).
void AddGraphFlags(CLI::App& app, GraphFlags& f, bool add_timeout);

// Everything a command needs to call Graph; the members outlive the client that uses them.
struct GraphSession {
  std::unique_ptr<HttpClient> http;
  std::unique_ptr<TokenSource> tokens;
  std::unique_ptr<GraphClient> graph;
};
// Reads the secrets (files, $GRAPH_TOKEN), checks the flags, builds the session and signs
// in once (so a wrong secret is one start-up error, not one per row).
absl::StatusOr<GraphSession> OpenGraph(const GraphFlags& f, GraphClient::Options options);

// Ctrl-C: set by SIGINT/SIGTERM while a command runs rows (InstallStopHandler).
const std::atomic<bool>* StopFlag();
void InstallStopHandler();

int RunImport(int argc, char** argv);  // import.cc
int RunList(int argc, char** argv);    // commands.cc
int RunRemove(int argc, char** argv);
int RunUpdate(int argc, char** argv);

}  // namespace hsmrewrap::pfx_import
