#include "util/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <fstream>

#include "test_support.h"

namespace megamoe {
namespace {
namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;
using testing::write_file;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

TEST(AtomicFile, ReplacesTargetOnlyOnCommit) {
  TempDir dir;
  const auto target = dir / "out.txt";
  write_file(target, "old");
  {
    AtomicFile file(target);
    file.write("new ");
    file.write("text");
    EXPECT_EQ(read_file(target), "old");  // untouched until commit
    file.commit();
    expect_error([&] { file.write("more"); }, {"out.txt"});
    expect_error([&] { file.commit(); }, {"out.txt", "twice"});
  }
  EXPECT_EQ(read_file(target), "new text");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);  // no temporary left
}

TEST(AtomicFile, AbandonedWriteLeavesOldFileAndNoTemporary) {
  TempDir dir;
  const auto target = dir / "out.txt";
  write_file(target, "old");
  {
    AtomicFile file(target);
    file.write("half");
  }
  EXPECT_EQ(read_file(target), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);
}

TEST(AtomicFile, UncreatableFileNamesTarget) {
  TempDir dir;
  expect_error([&] { AtomicFile file(dir / "missing" / "out.txt"); }, {"out.txt", "cannot create"});
}

// A full disk, simulated with a file size limit (EFBIG instead of ENOSPC, same code path).
TEST(AtomicFile, WriteErrorNamesTarget) {
  TempDir dir;
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);
  const std::string block(1 << 16, 'x');
  expect_error(
      [&] {
        AtomicFile file(dir / "big.bin");
        file.write(block);
        file.commit();
      },
      {"big.bin", "write failed"});
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, saved_handler);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(AtomicDirectory, AppearsWholeAndReplacesOldDirectory) {
  TempDir dir;
  const auto target = dir / "ckpt";
  fs::create_directory(target);
  write_file(target / "stale.txt", "stale");
  {
    AtomicDirectory out(target);
    EXPECT_NE(out.path(), target);
    write_file(out.path() / "a.txt", "a");
    EXPECT_TRUE(fs::exists(target / "stale.txt"));
    out.commit();
  }
  EXPECT_EQ(read_file(target / "a.txt"), "a");
  EXPECT_FALSE(fs::exists(target / "stale.txt"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);  // no temporary or old copy
}

TEST(AtomicDirectory, AbandonedDirectoryIsRemoved) {
  TempDir dir;
  {
    AtomicDirectory out(dir / "ckpt");
    write_file(out.path() / "a.txt", "a");
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

}  // namespace
}  // namespace megamoe
