/* A small closed-loop load generator for the benchmarks: request/reply over TCP or UDP.
 *
 *   loadgen tcp|udp HOST PORT CONNS WINDOW SECONDS MAX_OPS REQUEST_FILE REPLY_SIZE [ID_OFFSET ID_WIDTH]
 *
 * Each of CONNS connections keeps WINDOW copies of the request (the bytes of
 * REQUEST_FILE) in flight; every REPLY_SIZE bytes read back complete one
 * operation and send the next request. With ID_OFFSET/ID_WIDTH, those bytes of
 * each request are replaced by a per-connection counter in decimal, zero
 * padded (request ids that must differ while in flight). UDP: one datagram
 * per request, one per reply; a window that gets no reply for 1 s is refilled
 * (the lost datagrams are counted).
 *
 * It connects, prints "ready" and waits for a line on stdin, so the caller can
 * read the server's CPU time just before the load starts; then it runs for
 * SECONDS or MAX_OPS operations, whichever comes first, and prints one JSON
 * line: {"ops": N, "seconds": T, "lost": L}. Loopback only; bounded in time
 * and count.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    long in_flight;
    long reply_bytes; /* bytes of the current reply read so far */
    unsigned long counter;
    char *out;
    size_t out_len, out_cap;
    double last_progress;
} conn_t;

static char *request;
static size_t request_len;
static long reply_size;
static long id_offset = -1, id_width = 0;
static long ops, lost, max_ops;
static int udp;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void queue_request(conn_t *c) {
    if (c->out_len + request_len > c->out_cap) {
        c->out_cap = (c->out_len + request_len) * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out) die("realloc");
    }
    char *dst = c->out + c->out_len;
    memcpy(dst, request, request_len);
    if (id_offset >= 0) {
        /* always ID_WIDTH digits and no leading zero, so the id stays a valid JSON number */
        unsigned long base = 1;
        for (long k = 1; k < id_width; k++) base *= 10;
        char digits[32];
        snprintf(digits, sizeof digits, "%lu", base + (c->counter++ % (9 * base)));
        memcpy(dst + id_offset, digits, id_width);
    }
    c->out_len += request_len;
    c->in_flight++;
}

/* write what is queued; 0 ok, -1 the connection failed */
static int flush_out(conn_t *c) {
    while (c->out_len > 0) {
        ssize_t n = udp ? send(c->fd, c->out, request_len, 0) : send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    return 0;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc(*len);
    if (!data || fread(data, 1, *len, f) != *len) die(path);
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 10 && argc != 12) {
        fprintf(stderr, "usage: %s tcp|udp HOST PORT CONNS WINDOW SECONDS MAX_OPS REQUEST_FILE REPLY_SIZE [ID_OFFSET ID_WIDTH]\n", argv[0]);
        return 2;
    }
    udp = strcmp(argv[1], "udp") == 0;
    const char *host = argv[2];
    int port = atoi(argv[3]), nconns = atoi(argv[4]);
    long window = atol(argv[5]);
    double seconds = atof(argv[6]);
    max_ops = atol(argv[7]);
    reply_size = atol(argv[9]);
    if (argc == 12) {
        id_offset = atol(argv[10]);
        id_width = atol(argv[11]);
    }
    request = read_file(argv[8], &request_len);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    int ep = epoll_create1(0);
    conn_t *conns = calloc(nconns, sizeof(conn_t));
    /* LOADGEN_PREAMBLE: a file sent on each new connection, answered by a header ending in CRLF CRLF
     * (a WebSocket opening handshake) */
    char *preamble = NULL;
    size_t preamble_len = 0;
    if (getenv("LOADGEN_PREAMBLE")) preamble = read_file(getenv("LOADGEN_PREAMBLE"), &preamble_len);
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
        if (preamble) {
            if (send(fd, preamble, preamble_len, MSG_NOSIGNAL) != (ssize_t)preamble_len) die("preamble");
            char head[4096];
            size_t got = 0;
            while (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0) {
                if (got == sizeof head || recv(fd, head + got, 1, 0) != 1) die("preamble reply");
                got++;
            }
            if (memcmp(head, "HTTP/1.1 101", 12) != 0) {
                fprintf(stderr, "loadgen: the server refused the preamble: %.*s\n", (int)got, head);
                return 1;
            }
        }
        int one = 1;
        if (!udp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    printf("ready\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 2;

    double start = now(), deadline = start + seconds;
    for (int i = 0; i < nconns; i++) {
        for (long w = 0; w < window; w++) queue_request(&conns[i]);
        conns[i].last_progress = start;
        if (flush_out(&conns[i]) < 0) die("send");
    }
    static char buf[1 << 17];
    struct epoll_event events[256];
    int done = 0;
    while (!done) {
        double t = now();
        if (t >= deadline || ops >= max_ops) break;
        int n = epoll_wait(ep, events, 256, 100);
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[events[e].data.u32];
            if (events[e].events & EPOLLOUT && flush_out(c) < 0) die("send");
            if (!(events[e].events & EPOLLIN)) continue;
            for (;;) {
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                    die("recv");
                }
                if (r == 0) {
                    fprintf(stderr, "loadgen: the server closed a connection\n");
                    return 1;
                }
                long completed;
                if (udp) {
                    completed = 1;
                } else {
                    c->reply_bytes += r;
                    completed = c->reply_bytes / reply_size;
                    c->reply_bytes %= reply_size;
                }
                if (completed) {
                    ops += completed;
                    c->in_flight -= completed;
                    c->last_progress = now();
                    if (ops < max_ops) {
                        for (long k = 0; k < completed; k++) queue_request(c);
                    }
                    if (flush_out(c) < 0) die("send");
                }
            }
        }
        if (udp) { /* refill windows whose datagrams were lost */
            double t2 = now();
            for (int i = 0; i < nconns; i++) {
                conn_t *c = &conns[i];
                if (t2 - c->last_progress > 1.0) {
                    lost += c->in_flight;
                    c->in_flight = 0;
                    while (c->in_flight < window) queue_request(c);
                    c->last_progress = t2;
                    flush_out(c);
                }
            }
        }
    }
    printf("{\"ops\": %ld, \"seconds\": %.6f, \"lost\": %ld}\n", ops, now() - start, lost);
    return 0;
}
