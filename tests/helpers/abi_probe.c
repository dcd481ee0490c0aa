/* Makes one system call through a foreign ABI. Usage: abi_probe i386|x32
 * [disguise]. Under Ultari's default policy the call must kill the process
 * with SIGSYS; reaching the printf means the filter let it through.
 * "disguise" first blocks SIGSYS and names the process "SigBlk:0", so a
 * supervisor that reads its status carelessly takes it for one that does
 * not block SIGSYS. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

int main(int argc, char** argv) {
  long ret = -1;
  if (argc > 2 && strcmp(argv[2], "disguise") == 0) {
    sigset_t sys;
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    sigprocmask(SIG_BLOCK, &sys, NULL);
    prctl(PR_SET_NAME, "SigBlk:0", 0, 0, 0);
  }
  if (argc > 1 && strcmp(argv[1], "i386") == 0) {
    long nr = 20; /* getpid on i386 */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr) : "memory");
  } else if (argc > 1 && strcmp(argv[1], "x32") == 0) {
    long nr = 0x40000000L | 39; /* getpid via the x32 bit */
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr) : "rcx", "r11", "memory");
  } else {
    fprintf(stderr, "usage: abi_probe i386|x32\n");
    return 2;
  }
  printf("survived ret=%ld\n", ret);
  return 0;
}
