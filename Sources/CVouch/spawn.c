#define _GNU_SOURCE
#include "vouch_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_once_t spawner_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t spawner_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t spawner_cond = PTHREAD_COND_INITIALIZER;
static const vouch_spawn_request *pending_request;
static pid_t pending_pid;
static int pending_result;
static int pending_done;
/* Serialises callers: one request in flight at a time. */
static pthread_mutex_t caller_lock = PTHREAD_MUTEX_INITIALIZER;

static void child_exec(const vouch_spawn_request *r, pid_t parent, int err_fd) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    if (r->foreground) {
        setpgid(0, 0);
        /* We are a background group until this call, which would stop us. */
        signal(SIGTTOU, SIG_IGN);
        if (r->stdin_fd >= 0 && isatty(r->stdin_fd)) (void)tcsetpgrp(r->stdin_fd, getpid());
        signal(SIGTTOU, SIG_DFL);
    } else {
        setsid();
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);

    /* Keep the error pipe and the inherited fd clear of 0-3 while we shuffle. */
    err_fd = fcntl(err_fd, F_DUPFD_CLOEXEC, 10);
    int extra = r->inherit_fd >= 0 ? fcntl(r->inherit_fd, F_DUPFD_CLOEXEC, 10) : -1;
    int null_fd = open("/dev/null", O_RDWR);
    int fds[3] = {r->stdin_fd, r->stdout_fd, r->stderr_fd};
    /* Move sources above 2 first so dup2 never clobbers a later source. */
    for (int i = 0; i < 3; i++) {
        int src = fds[i] < 0 ? null_fd : fds[i];
        fds[i] = fcntl(src, F_DUPFD_CLOEXEC, 10);
    }
    for (int i = 0; i < 3; i++) dup2(fds[i], i);
    if (r->set_ctty) {
        int tty = -1;
        for (int i = 0; i < 3 && tty < 0; i++)
            if (isatty(i)) tty = i;
        if (tty < 0 || ioctl(tty, TIOCSCTTY, 0) != 0) {
            int e = tty < 0 ? ENOTTY : errno;
            (void)!write(err_fd, &e, sizeof e);
            _exit(127);
        }
    }
    if (extra >= 0) dup2(extra, 3);
    syscall(SYS_close_range, extra >= 0 ? 4 : 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
    fcntl(err_fd, F_SETFD, FD_CLOEXEC);

    if (r->cwd && chdir(r->cwd) != 0) {
        int e = errno;
        (void)!write(err_fd, &e, sizeof e);
        _exit(127);
    }
    execve(r->path, r->argv, r->envp);
    int e = errno;
    (void)!write(err_fd, &e, sizeof e);
    _exit(127);
}

static int do_spawn(const vouch_spawn_request *r, pid_t *pid_out) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return errno;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return e;
    }
    if (pid == 0) {
        close(pipefd[0]);
        child_exec(r, parent, pipefd[1]);
    }
    close(pipefd[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == sizeof child_errno) {
        waitpid(pid, NULL, 0);
        return child_errno;
    }
    *pid_out = pid;
    return 0;
}

static void *spawner_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&spawner_lock);
    for (;;) {
        while (pending_request == NULL || pending_done)
            pthread_cond_wait(&spawner_cond, &spawner_lock);
        pending_result = do_spawn(pending_request, &pending_pid);
        pending_done = 1;
        pthread_cond_broadcast(&spawner_cond);
    }
    return NULL;
}

static void start_spawner(void) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&thread, &attr, spawner_main, NULL);
    pthread_attr_destroy(&attr);
}

int vouch_spawn(const vouch_spawn_request *request, pid_t *pid_out) {
    pthread_once(&spawner_once, start_spawner);
    pthread_mutex_lock(&caller_lock);
    pthread_mutex_lock(&spawner_lock);
    pending_request = request;
    pending_done = 0;
    pthread_cond_broadcast(&spawner_cond);
    while (!pending_done) pthread_cond_wait(&spawner_cond, &spawner_lock);
    int result = pending_result;
    *pid_out = pending_pid;
    pending_request = NULL;
    pthread_mutex_unlock(&spawner_lock);
    pthread_mutex_unlock(&caller_lock);
    return result;
}

int vouch_wait(pid_t pid) {
    int status;
    for (;;) {
        if (waitpid(pid, &status, 0) >= 0) return status;
        if (errno != EINTR) return -errno;
    }
}

int vouch_exited(int status) { return WIFEXITED(status); }
int vouch_exit_status(int status) { return WEXITSTATUS(status); }
int vouch_signaled(int status) { return WIFSIGNALED(status); }
int vouch_term_signal(int status) { return WTERMSIG(status); }

#include <dlfcn.h>

const char *vouch_library_path(void) {
    Dl_info info;
    if (dladdr((void *)vouch_library_path, &info) && info.dli_fname) return info.dli_fname;
    return NULL;
}

#include <stdio.h>

void vouch_line_buffer_stdout(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

int vouch_take_terminal(int fd) {
    void (*old)(int) = signal(SIGTTOU, SIG_IGN);
    int result = tcsetpgrp(fd, getpgrp()) == 0 ? 0 : errno;
    signal(SIGTTOU, old);
    return result;
}
