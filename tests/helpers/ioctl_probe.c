/* Tries TIOCSTI / TIOCLINUX on a pty, also with garbage in the upper 32 bits
 * of the request. Prints one line per attempt: "<name> errno=<n>" (0 = the
 * call went through). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void try_ioctl(const char* name, int fd, unsigned long req, void* arg) {
  long rc = syscall(SYS_ioctl, fd, req, arg);
  printf("%s errno=%d\n", name, rc == 0 ? 0 : errno);
}

int main(void) {
  int master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) || unlockpt(master)) {
    perror("pty");
    return 2;
  }
  int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
  if (slave < 0) {
    perror("open pts");
    return 2;
  }
  char c = 'x';
  char sub = 0; /* TIOCLINUX subcode; harmless on a pty */
  try_ioctl("TIOCSTI", slave, TIOCSTI, &c);
  try_ioctl("TIOCSTI-high", slave, 0xffffffff00000000UL | TIOCSTI, &c);
  try_ioctl("TIOCLINUX", slave, TIOCLINUX, &sub);
  try_ioctl("TCGETS", slave, TCGETS, &(char[64]){0});
  return 0;
}
