/* Per-user_struct kernel budgets, keyed by the kuid (not by a user
 * namespace's owner), that every rootful sandbox's processes share because
 * they all run as the same subordinate host uids (review6):
 *
 *   channel_probe pipes [hold TAG]     creates pipes until a new one gets less
 *                                      than the default 16 pages
 *                                      (fs.pipe-user-pages-soft), prints
 *                                      "pipes N size S"
 *   channel_probe pipesz               one new pipe: "pipesz S" (its capacity)
 *   channel_probe inflight [hold TAG]  sends unix socket fds (SCM_RIGHTS) that
 *                                      nobody receives until the kernel refuses
 *                                      (too_many_unix_fds: ETOOMANYREFS), prints
 *                                      "inflight N errno E"
 *   channel_probe sendfd               sends one fd: "sendfd ok" / "sendfd errno E"
 *   channel_probe epoll [hold TAG]     adds epoll watches until the kernel
 *                                      refuses (fs.epoll.max_user_watches:
 *                                      ENOSPC), prints "epoll N errno E"
 *   channel_probe epoll1               one watch: "epoll1 ok" / "epoll1 errno E"
 *
 * With "hold" the probe keeps what it took until killed (TAG only names the
 * process for the tests). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static void hold_if(int argc, char** argv) {
  fflush(stdout);
  if (argc >= 3 && strcmp(argv[2], "hold") == 0)
    for (;;) pause();
}

static int send_fds(int sock, const int* fds, int n) {
  char byte = 'x';
  struct iovec iov = {&byte, 1};
  char control[CMSG_SPACE(253 * sizeof(int))];
  memset(control, 0, sizeof control);
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(n * sizeof(int));
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(n * sizeof(int));
  memcpy(CMSG_DATA(c), fds, n * sizeof(int));
  return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 ? 0 : -1;
}

int main(int argc, char** argv) {
  const char* mode = argc >= 2 ? argv[1] : "";
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  if (strcmp(mode, "pipes") == 0 || strcmp(mode, "pipesz") == 0) {
    int count = 0, size = 0;
    for (;;) {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) {
        size = -errno;
        break;
      }
      close(p[1]); /* the read end keeps the pipe (and its pages' charge) */
      size = fcntl(p[0], F_GETPIPE_SZ);
      if (strcmp(mode, "pipesz") == 0) {
        printf("pipesz %d\n", size);
        return 0;
      }
      if (size < 16 * 4096 || ++count >= 100000) break;
    }
    printf("pipes %d size %d\n", count, size);
    hold_if(argc, argv);
    return 0;
  }
  if (strcmp(mode, "inflight") == 0 || strcmp(mode, "sendfd") == 0) {
    int sv[2], payload[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, payload) != 0) {
      perror("socketpair");
      return 1;
    }
    /* A large receive queue: the budget, not the socket buffer, must stop us. */
    int big = 1 << 30;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    int fds[253];
    for (int i = 0; i < 253; ++i) fds[i] = payload[0];
    if (strcmp(mode, "sendfd") == 0) {
      if (send_fds(sv[0], fds, 1) == 0)
        printf("sendfd ok\n");
      else
        printf("sendfd errno %d\n", errno);
      return 0;
    }
    long count = 0;
    int err = 0;
    /* Big batches first, then one at a time up to the exact limit. */
    for (int batch = 64;;) {
      if (send_fds(sv[0], fds, batch) == 0) {
        count += batch;
        if (count >= 1000000) break;
        continue;
      }
      err = errno;
      if (err == ETOOMANYREFS && batch > 1) {
        batch = 1;
        continue;
      }
      break;
    }
    printf("inflight %ld errno %d\n", count, err);
    hold_if(argc, argv);
    return 0;
  }
  if (strcmp(mode, "epoll") == 0 || strcmp(mode, "epoll1") == 0) {
    int target = eventfd(0, EFD_CLOEXEC);
    long count = 0;
    int err = 0;
    for (;;) {
      int ep = epoll_create1(EPOLL_CLOEXEC);
      if (ep < 0) {
        err = errno;
        break;
      }
      /* Every epoll instance may watch the same file once. */
      struct epoll_event ev = {EPOLLIN, {0}};
      if (epoll_ctl(ep, EPOLL_CTL_ADD, target, &ev) != 0) {
        err = errno;
        break;
      }
      if (strcmp(mode, "epoll1") == 0) {
        printf("epoll1 ok\n");
        return 0;
      }
      if (++count >= 1000000) break;
    }
    if (strcmp(mode, "epoll1") == 0) {
      printf("epoll1 errno %d\n", err);
      return 0;
    }
    printf("epoll %ld errno %d\n", count, err);
    hold_if(argc, argv);
    return 0;
  }
  fprintf(stderr, "usage: channel_probe pipes|pipesz|inflight|sendfd|epoll|epoll1 [hold TAG]\n");
  return 2;
}
