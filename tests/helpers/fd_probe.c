/* Lists this process's open fds ("fds: 0 1 2") and tries to reach the host
 * through any inherited directory fd (CVE-2024-21626). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) {
    perror("opendir");
    return 2;
  }
  int self = dirfd(d);
  printf("fds:");
  struct dirent* e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.' && atoi(e->d_name) != self) printf(" %s", e->d_name);
  printf("\n");
  closedir(d);
  return 0;
}
