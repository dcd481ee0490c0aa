// Bad input: a clear one-line error that names the problem, exit 125.
#include <gtest/gtest.h>

#include "harness.h"

namespace ultari::test {
namespace {

void expect_clear_error(const std::vector<std::string>& args, const std::string& mention) {
  Outcome r = ultari(args);
  EXPECT_EQ(r.status, 125) << r.err;
  EXPECT_EQ(r.err.rfind("ultari: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(mention), std::string::npos) << "stderr: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST(Cli, BadInputNamesTheProblem) {
  expect_clear_error({"run", "--rootfs", "/nonexistent-root", "--", "true"}, "/nonexistent-root");
  expect_clear_error({"run", "--memory", "lots", "--", "true"}, "lots");
  expect_clear_error({"run", "--timeout", "5 parsecs", "--", "true"}, "5 parsecs");
  expect_clear_error({"run", "--cpus", "-1", "--", "true"}, "-1");
  expect_clear_error({"run", "--user", "bob", "--", "true"}, "--user");
  expect_clear_error({"run", "--bind", "/nonexistent-src:/x", "--", "true"}, "/nonexistent-src");
  expect_clear_error({"run", "--ro-bind", "/etc:relative", "--", "true"}, "relative");
  expect_clear_error({"run", "--env", "NOEQUALS", "--", "true"}, "NOEQUALS");
  expect_clear_error({"run", "--no-such-flag", "--", "true"}, "--no-such-flag");
  expect_clear_error({"run"}, "command");
  expect_clear_error({"run", "--rootfs", "/", "--", "true"}, "rootfs");
}

TEST(Cli, SetupErrorReportHasTheError) {
  Outcome r = ultari({"run", "--rootfs", "/nonexistent-root", "--", "true"});
  // A report is written even when the sandbox could not be built.
  EXPECT_EQ(r.report["verdict"], "setup_error");
  EXPECT_EQ(r.report["exit_code"], 125);
  EXPECT_NE(r.report["error"].get<std::string>().find("/nonexistent-root"), std::string::npos);
}

TEST(Cli, RepeatableOptionsAccumulateOthersLastWins) {
  Outcome r = sh("echo $A $B; hostname", {"--env", "A=1", "--env", "B=2", "--hostname", "one", "--hostname", "two"});
  EXPECT_EQ(r.out, "1 2\ntwo\n") << r.err;
}

}  // namespace
}  // namespace ultari::test
