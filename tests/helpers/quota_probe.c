/* Per-user kernel quotas: "quota_probe inotify [hold TAG]" creates inotify
 * instances until the kernel refuses one and prints "inotify N errno E";
 * "quota_probe mqueue [hold TAG]" does the same with POSIX message queues
 * (RLIMIT_MSGQUEUE bytes) and prints "mqueue N errno E"; with "hold", it
 * then keeps them until killed (TAG only names the process
 * for the tests that look for it). "quota_probe owner" prints the host uid
 * that owns the user namespace of the process whose pid follows (run on
 * the host: "quota_probe owner PID"). */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define NS_GET_OWNER_UID 0xb704 /* _IO(0xb7, 0x4) */

int main(int argc, char** argv) {
  int inotify = argc >= 2 && strcmp(argv[1], "inotify") == 0;
  if (inotify || (argc >= 2 && strcmp(argv[1], "mqueue") == 0)) {
    int count = 0, err = 0;
    struct mq_attr attr = {0};
    attr.mq_maxmsg = 10;
    attr.mq_msgsize = 1024;
    for (;;) {
      char name[64];
      snprintf(name, sizeof name, "/quota-probe-%d-%d", (int)getpid(), count);
      int fd = inotify ? inotify_init1(IN_CLOEXEC) : (int)mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr);
      if (fd < 0) {
        err = errno;
        break;
      }
      if (!inotify) mq_unlink(name); /* the queue lives while its descriptor does */
      if (++count >= 100000) break;
    }
    printf("%s %d errno %d\n", argv[1], count, err);
    fflush(stdout);
    if (argc >= 3 && strcmp(argv[2], "hold") == 0)
      for (;;) pause();
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "owner") == 0) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/user", argv[2]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unsigned int uid = 0;
    if (fd < 0 || ioctl(fd, NS_GET_OWNER_UID, &uid) != 0) {
      perror(path);
      return 1;
    }
    printf("owner %u\n", uid);
    return 0;
  }
  fprintf(stderr, "usage: quota_probe inotify|mqueue [hold TAG] | owner PID\n");
  return 2;
}
