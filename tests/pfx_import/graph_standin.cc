// graph-standin: the FakeGraph of the pfx-import tests as a program, so docs/pfx-import.md
// can walk the whole procedure without a tenant. Prints
//   graph stand-in on http://127.0.0.1:PORT (tenant T, app CLIENT_ID)
// and serves until SIGINT/SIGTERM. Not for production: state is in memory.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "tests/pfx_import/graph_fake.h"

namespace {
std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  std::string v = s.str();
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.pop_back();
  return v;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"graph-standin: a local Graph + token endpoint for trying pfx-import"};
  hsmrewrap::pfx_test::FakeGraph::App a;
  std::vector<std::string> users;
  std::string secret_file, cert_file, token_file;
  size_t page_size = 100;
  app.add_option("--tenant", a.tenant, "tenant (default contoso.example)");
  app.add_option("--client-id", a.client_id, "the registered app's client id");
  app.add_option("--client-secret-file", secret_file, "its client secret");
  app.add_option("--client-cert", cert_file, "its certificate (PEM) for client assertions");
  app.add_option("--token-file", token_file, "a bearer token Graph accepts as well");
  app.add_option("--users", users, "UPNs that exist in the tenant")->delimiter(',');
  app.add_option("--page-size", page_size, "records per GET page (default 100)");
  CLI11_PARSE(app, argc, argv);
  if (!secret_file.empty()) a.client_secret = Slurp(secret_file);
  if (!cert_file.empty()) a.client_cert_pem = Slurp(cert_file) + "\n";
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the server's threads start
  hsmrewrap::pfx_test::FakeGraph graph;
  graph.SetApp(a);
  graph.SetPageSize(page_size);
  for (const auto& u : users) graph.AddUser(u);
  if (!token_file.empty()) graph.AddToken(Slurp(token_file));
  std::cout << "graph stand-in on " << graph.base() << " (tenant " << a.tenant << ", app "
            << a.client_id << ")" << std::endl;
  int sig = 0;
  sigwait(&set, &sig);
  return 0;
}
