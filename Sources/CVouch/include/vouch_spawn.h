#ifndef VOUCH_SPAWN_H
#define VOUCH_SPAWN_H

#include <sys/types.h>

/// What to start. File descriptors equal to -1 are connected to /dev/null.
typedef struct {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;      /* NULL: inherit */
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    /* Non-zero: make the first of stdin, stdout, stderr that is a terminal
       the child's controlling terminal (TIOCSCTTY, after setsid and the
       dup2s), as a console getty or a backdoor on /dev/hvc0 has. The spawn
       fails with ENOTTY if none is a terminal. 0: no controlling terminal. */
    int set_ctty;
    /* A descriptor to hand to the child as fd 3 (e.g. QEMU's end of the
       guest shell socket), or -1. */
    int inherit_fd;
    /* Non-zero: stay in the caller's session, in a new process group that
       becomes the foreground group of the terminal on stdin, so that the
       terminal's ^C reaches the child (an interactive session) and not the
       caller. The caller takes the terminal back with vouch_take_terminal. */
    int foreground;
} vouch_spawn_request;

/// Starts a child in its own session whose parent-death signal is SIGKILL.
///
/// The fork happens on one dedicated thread that lives as long as the
/// process: PR_SET_PDEATHSIG fires when the *thread* that forked exits, and
/// Swift's worker threads may exit while the child still runs.
/// Returns 0 and stores the pid, or an errno value (also for a failed exec).
int vouch_spawn(const vouch_spawn_request *request, pid_t *pid_out);

/// Makes the caller's process group the foreground group of terminal `fd`
/// again (after a `foreground` child). Returns 0 or an errno value.
int vouch_take_terminal(int fd);

/// waitpid() that retries on EINTR. Returns the raw status or -errno.
int vouch_wait(pid_t pid);

/// Decoders for the raw status, since the W* macros are not imported.
int vouch_exited(int status);
int vouch_exit_status(int status);
int vouch_signaled(int status);
int vouch_term_signal(int status);



/// The path of the shared object this code is linked into (libVouch.so).
const char *vouch_library_path(void);

/// Makes C stdout line-buffered (Swift cannot touch the `stdout` global safely).
void vouch_line_buffer_stdout(void);

#endif
