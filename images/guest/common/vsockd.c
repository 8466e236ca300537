/*
 * vsockd PORT SCRIPT: the backdoor on a vsock port, for VMMs without a
 * virtio console (firecracker; cloud-hypervisor can use either).
 *
 * One root shell, kept across connections: SCRIPT runs in a new session
 * on a pty (so ^C from the host interrupts a command, as on hvc0), with
 * the pty's path as $1, and prints the banner itself. vsockd relays bytes
 * between the current connection and the pty master. When the connection
 * ends the shell stays, with everything it started, and the next
 * connection gets it back (a VMM resets vsock connections when it restores
 * a snapshot: the restored guest's processes must go on, as on QEMU). A
 * new connection replaces the current one; when the shell exits, the
 * connection is closed and the next one gets a new shell (and banner).
 *
 * Where there is no vsock (Vouch's VMM emulators run under QEMU on hosts
 * without vhost-vsock), the emulator gives the guest a virtio-serial port
 * named org.vouch.vsock.PORT instead. Holding that port open is what
 * "listening" means to the emulator; a session starts when the host side
 * connects (poll stops reporting POLLHUP) and ends when it disconnects
 * (read returns 0), and the port is closed and opened again after it.
 *
 * Static, no dependencies: it runs in the busybox initramfs guest too.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *script;

static void say(const char *fmt, const char *arg)
{
    int fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        fd = 2;
    dprintf(fd, "vsockd: ");
    dprintf(fd, fmt, arg);
    dprintf(fd, "\n");
    if (fd != 2)
        close(fd);
}

/* Starts SCRIPT on a new pty; returns the master (or -1) and the pid. */
static int spawn_shell(pid_t *pid)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
        return -1;
    char *slave = ptsname(master);
    if (!slave)
        return -1;
    char path[64];
    snprintf(path, sizeof path, "%s", slave);
    *pid = fork();
    if (*pid < 0)
        return -1;
    if (*pid == 0) {
        signal(SIGCHLD, SIG_DFL);
        setsid();
        /* A session leader opening a tty without O_NOCTTY acquires it. */
        int s = open(path, O_RDWR);
        if (s < 0)
            _exit(127);
        struct termios t;
        if (tcgetattr(s, &t) == 0) {
            cfmakeraw(&t);
            tcsetattr(s, TCSANOW, &t);
        }
        dup2(s, 0);
        dup2(s, 1);
        int err = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
        if (err < 0)
            err = open("/dev/null", O_WRONLY);
        dup2(err, 2);
        if (s > 2)
            close(s);
        if (err > 2)
            close(err);
        execl(script, script, path, (char *)NULL);
        _exit(127);
    }
    return master;
}

static int master = -1;
static pid_t shell_pid = -1;

/* The shell's pty master, starting the shell if there is none. */
static int ensure_shell(void)
{
    if (master >= 0 && waitpid(shell_pid, NULL, WNOHANG) == shell_pid) {
        close(master);
        master = -1;
    }
    if (master < 0) {
        master = spawn_shell(&shell_pid);
        if (master < 0)
            say("cannot start a shell: %s", strerror(errno));
        else
            fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    }
    return master;
}

/* The shell ended: reap it, so the next connection gets a new one. */
static void shell_gone(void)
{
    close(master);
    master = -1;
    kill(-shell_pid, SIGKILL);
    waitpid(shell_pid, NULL, 0);
}

enum ended { HOST_LEFT, SHELL_LEFT, REPLACED };

/* Moves bytes between conn (read from in, written to out) and the pty
 * master until the host or the shell goes, or (listener >= 0) another
 * connection arrives. Non-blocking, one buffer per direction, so a shell
 * that is busy writing never blocks the host's input. */
static enum ended relay(int in, int out, int listener)
{
    static char up[65536], down[65536]; /* up: to the host; down: to the shell */
    size_t uplen = 0, upoff = 0, downlen = 0, downoff = 0;
    for (;;) {
        struct pollfd p[4];
        int n = 0, iin = -1, iout = -1, im, il = -1;
        if (downlen == downoff) {
            p[n] = (struct pollfd){ .fd = in, .events = POLLIN };
            iin = n++;
        }
        if (uplen > upoff) {
            p[n] = (struct pollfd){ .fd = out, .events = POLLOUT };
            iout = n++;
        }
        p[n] = (struct pollfd){ .fd = master, .events = (uplen == upoff ? POLLIN : 0) | (downlen > downoff ? POLLOUT : 0) };
        im = n++;
        if (listener >= 0) {
            p[n] = (struct pollfd){ .fd = listener, .events = POLLIN };
            il = n++;
        }
        if (poll(p, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            return HOST_LEFT;
        }
        if (il >= 0 && (p[il].revents & POLLIN))
            return REPLACED;
        if (iin >= 0 && p[iin].revents) {
            ssize_t r = read(in, down, sizeof down);
            if (r <= 0)
                return HOST_LEFT;
            downlen = (size_t)r;
            downoff = 0;
        }
        if (iout >= 0 && (p[iout].revents & (POLLERR | POLLHUP)) && !(p[iout].revents & POLLOUT))
            return HOST_LEFT;
        if (iout >= 0 && (p[iout].revents & POLLOUT)) {
            ssize_t w = write(out, up + upoff, uplen - upoff);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return HOST_LEFT;
            if (w > 0)
                upoff += (size_t)w;
        }
        if (p[im].revents & POLLOUT) {
            ssize_t w = write(master, down + downoff, downlen - downoff);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return SHELL_LEFT;
            if (w > 0)
                downoff += (size_t)w;
        }
        if (p[im].revents & POLLIN) {
            ssize_t r = read(master, up, sizeof up);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
                return SHELL_LEFT; /* EIO: the shell exited */
            if (r > 0) {
                uplen = (size_t)r;
                upoff = 0;
            }
        } else if (p[im].revents & (POLLHUP | POLLERR)) {
            return SHELL_LEFT;
        }
    }
}

/* One host connection, on the shell (started if need be). */
static enum ended session(int in, int out, int listener)
{
    if (ensure_shell() < 0)
        return SHELL_LEFT;
    enum ended how = relay(in, out, listener);
    if (how == SHELL_LEFT)
        shell_gone();
    return how;
}

/* The /dev node of the virtio-serial port named org.vouch.vsock.PORT. */
static int find_port(const char *port, char *dev, size_t len)
{
    char want[64];
    snprintf(want, sizeof want, "org.vouch.vsock.%s", port);
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], name[80] = "";
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof name, f)) {
            name[strcspn(name, "\n")] = 0;
            if (strcmp(name, want) == 0) {
                snprintf(dev, len, "/dev/%s", e->d_name);
                found = 1;
            }
        }
        fclose(f);
    }
    closedir(d);
    return found;
}

/* Whether a virtio vsock device (virtio device id 19) is present. */
static int has_vsock_device(void)
{
    DIR *d = opendir("/sys/bus/virtio/devices");
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], id[32] = "";
        snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/device", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(id, sizeof id, f) && strtoul(id, NULL, 16) == 19)
            found = 1;
        fclose(f);
    }
    closedir(d);
    return found;
}

/* The port is opened afresh for each session: the emulator sees the guest
 * close and reopen it, which tells it the old session is over and the
 * listener is ready again (after a snapshot restore, say). */
static void serve_port(const char *dev)
{
    for (int waited = 0;;) {
        int fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) {
            if (!waited++)
                say("waiting for %s", dev);
            sleep(1);
            continue;
        }
        for (;;) {
            struct pollfd p = { .fd = fd, .events = POLLIN };
            poll(&p, 1, 0);
            if (!(p.revents & POLLHUP))
                break;
            usleep(50000); /* no host side yet */
        }
        session(fd, fd, -1);
        close(fd);
    }
}

static void serve_vsock(unsigned port)
{
    int s;
    for (int i = 0;; i++) {
        s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
        if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 && listen(s, 8) == 0)
            break;
        if (i == 0)
            say("no vsock yet (%s); retrying", strerror(errno));
        if (s >= 0)
            close(s);
        sleep(1);
    }
    int c = -1;
    for (;;) {
        if (c < 0) {
            c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) {
                if (errno != EINTR)
                    usleep(100000);
                continue;
            }
        }
        enum ended how = session(c, c, s);
        close(c);
        c = -1;
        if (how == REPLACED)
            c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: vsockd PORT SCRIPT\n");
        return 2;
    }
    script = argv[2];
    signal(SIGPIPE, SIG_IGN);
    char dev[300];
    /* Whichever appears: a virtio vsock device (a real VMM) or the
     * emulator's stand-in port. Drivers bind asynchronously (udev). */
    for (int i = 0;; i++) {
        if (find_port(argv[1], dev, sizeof dev)) {
            serve_port(dev);
            return 1;
        }
        if (has_vsock_device())
            break;
        if (i == 100)
            say("neither a vsock device nor port org.vouch.vsock.%s yet; still waiting", argv[1]);
        usleep(100000);
    }
    serve_vsock((unsigned)strtoul(argv[1], NULL, 10));
    return 1;
}
