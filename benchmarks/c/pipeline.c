/* zguide's ventilator -> workers -> sink in C against libzmq: the
 * per-message physical reference of the "job" benchmark group (issue 15).
 *
 *   pipeline sink WORKERS ROUNDS MESSAGES
 *       binds a PUSH (ventilator) and a PULL (sink) on tcp://127.0.0.1:*,
 *       prints "VENT_ENDPOINT SINK_ENDPOINT", waits until WORKERS peers
 *       completed the handshake with the ventilator, then runs one warm-up
 *       round and ROUNDS rounds of MESSAGES 100-byte messages (the
 *       ventilator in a thread, the sink here), printing "round SECONDS"
 *       for each; exit 0.
 *   pipeline worker VENT_ENDPOINT SINK_ENDPOINT
 *       PULL from the ventilator, PUSH the message unchanged to the sink,
 *       until killed.
 *
 * Built by benchmarks/c_reference.py with the compiler found, against the
 * libzmq that pyzmq ships (or the system's).  pyzmq ships no zmq.h, so the
 * few declarations below follow libzmq 4.x's public zmq.h.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ZMQ_PAIR 0
#define ZMQ_PULL 7
#define ZMQ_PUSH 8
#define ZMQ_LINGER 17
#define ZMQ_RCVTIMEO 27
#define ZMQ_LAST_ENDPOINT 32
#define ZMQ_EVENT_HANDSHAKE_SUCCEEDED 0x1000

void *zmq_ctx_new(void);
int zmq_ctx_term(void *ctx);
void *zmq_socket(void *ctx, int type);
int zmq_close(void *s);
int zmq_bind(void *s, const char *addr);
int zmq_connect(void *s, const char *addr);
int zmq_setsockopt(void *s, int option, const void *value, size_t len);
int zmq_getsockopt(void *s, int option, void *value, size_t *len);
int zmq_send(void *s, const void *buf, size_t len, int flags);
int zmq_recv(void *s, void *buf, size_t len, int flags);
int zmq_socket_monitor(void *s, const char *addr, int events);
int zmq_errno(void);
const char *zmq_strerror(int errnum);

#define PAYLOAD_SIZE 100

static unsigned char payload[PAYLOAD_SIZE];

static void die(const char *what)
{
    fprintf(stderr, "pipeline: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

struct vent_args {
    void *vent;
    long messages;
};

static void *ventilate(void *arg)
{
    struct vent_args *a = arg;
    for (long i = 0; i < a->messages; i++)
        if (zmq_send(a->vent, payload, PAYLOAD_SIZE, 0) != PAYLOAD_SIZE)
            die("send");
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One round: the ventilator thread sends `messages`, the sink receives
 * them.  Returns the seconds it took. */
static double round_trip(void *vent, void *sink, long messages)
{
    unsigned char buf[PAYLOAD_SIZE];
    struct vent_args args = {vent, messages};
    pthread_t thread;
    double t0 = now();
    if (pthread_create(&thread, NULL, ventilate, &args) != 0) {
        fprintf(stderr, "pipeline: pthread_create failed\n");
        exit(1);
    }
    for (long i = 0; i < messages; i++)
        if (zmq_recv(sink, buf, sizeof buf, 0) < 0)
            die("recv (a message lost?)");
    pthread_join(thread, NULL);
    return now() - t0;
}

/* Block until `count` peers completed the handshake with `sock`. */
static void wait_handshakes(void *ctx, void *sock, int count)
{
    int seen = 0, timeout = 30000;
    unsigned char event[6];
    char endpoint[256];
    void *mon = zmq_socket(ctx, ZMQ_PAIR);
    if (zmq_socket_monitor(sock, "inproc://pipeline-monitor", ZMQ_EVENT_HANDSHAKE_SUCCEEDED))
        die("monitor");
    zmq_setsockopt(mon, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    if (zmq_connect(mon, "inproc://pipeline-monitor"))
        die("monitor connect");
    while (seen < count) {
        uint16_t id;
        if (zmq_recv(mon, event, sizeof event, 0) < 0)
            die("waiting for the workers");
        zmq_recv(mon, endpoint, sizeof endpoint, 0);
        memcpy(&id, event, sizeof id);
        if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
            seen++;
    }
    zmq_socket_monitor(sock, NULL, 0);
    zmq_close(mon);
}

static int run_sink(int workers, int rounds, long messages)
{
    char vent_ep[256], sink_ep[256];
    size_t len;
    int linger = 0, timeout = 30000;
    void *ctx = zmq_ctx_new();
    void *vent = zmq_socket(ctx, ZMQ_PUSH);
    void *sink = zmq_socket(ctx, ZMQ_PULL);
    if (zmq_bind(vent, "tcp://127.0.0.1:*") || zmq_bind(sink, "tcp://127.0.0.1:*"))
        die("bind");
    len = sizeof vent_ep;
    zmq_getsockopt(vent, ZMQ_LAST_ENDPOINT, vent_ep, &len);
    len = sizeof sink_ep;
    zmq_getsockopt(sink, ZMQ_LAST_ENDPOINT, sink_ep, &len);
    zmq_setsockopt(sink, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    printf("%s %s\n", vent_ep, sink_ep);
    fflush(stdout);
    wait_handshakes(ctx, vent, workers);
    round_trip(vent, sink, messages / 10 + 1);          /* warm-up */
    for (int r = 0; r < rounds; r++) {
        printf("round %.9f\n", round_trip(vent, sink, messages));
        fflush(stdout);
    }
    zmq_setsockopt(vent, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sink, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(vent);
    zmq_close(sink);
    zmq_ctx_term(ctx);
    return 0;
}

__attribute__((noreturn)) static void run_worker(const char *vent_ep, const char *sink_ep)
{
    unsigned char buf[PAYLOAD_SIZE];
    void *ctx = zmq_ctx_new();
    void *pull = zmq_socket(ctx, ZMQ_PULL);
    void *push = zmq_socket(ctx, ZMQ_PUSH);
    if (zmq_connect(pull, vent_ep) || zmq_connect(push, sink_ep))
        die("connect");
    for (;;) {
        int n = zmq_recv(pull, buf, sizeof buf, 0);
        if (n < 0 || zmq_send(push, buf, (size_t)n, 0) != n)
            die("worker");
    }
}

int main(int argc, char **argv)
{
    for (int i = 0; i < PAYLOAD_SIZE; i++)
        payload[i] = (unsigned char)i;
    if (argc == 5 && strcmp(argv[1], "sink") == 0)
        return run_sink(atoi(argv[2]), atoi(argv[3]), atol(argv[4]));
    if (argc == 4 && strcmp(argv[1], "worker") == 0)
        run_worker(argv[2], argv[3]);
    fprintf(stderr, "usage: %s sink WORKERS ROUNDS MESSAGES | worker VENT SINK\n", argv[0]);
    return 2;
}
