/* The few libzmq entry points pylm_core calls, resolved at run time.
 *
 * pyzmq wheels ship libzmq as a private shared library and no zmq.h
 * (pyzmq issue #1826).  Instead of linking against that hashed file name
 * (which ties a build to one pyzmq wheel), the core looks the symbols up in
 * the libzmq that pyzmq has already loaded: dlopen(RTLD_NOLOAD) of pyzmq's
 * backend extension, then dlsym, which searches that object's dependencies.
 * The process therefore holds exactly one libzmq, shared with pyzmq, so
 * inproc:// endpoints and pyzmq socket handles (Socket.underlying) work
 * across both.  Declarations follow libzmq 4.x's public zmq.h.
 */
#ifndef PYLM_ZMQAPI_H
#define PYLM_ZMQAPI_H

#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pz_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} pz_msg_t;

typedef struct pz_pollitem_t {
    void *socket;
    int fd;
    short events;
    short revents;
} pz_pollitem_t;

typedef void(pz_free_fn)(void *data, void *hint);

#define PZ_HAUSNUMERO 156384712
#define PZ_ETERM (PZ_HAUSNUMERO + 53)
#define PZ_DONTWAIT 1
#define PZ_SNDMORE 2
#define PZ_POLLIN 1
#define PZ_POLLOUT 2
#define PZ_POLLERR 4
#define PZ_RCVTIMEO 27
#define PZ_FD 14
#define PZ_EVENTS 15

static int (*pz_msg_init)(pz_msg_t *);
static int (*pz_msg_init_size)(pz_msg_t *, size_t);
static int (*pz_msg_init_data)(pz_msg_t *, void *, size_t, pz_free_fn *, void *);
static int (*pz_msg_close)(pz_msg_t *);
static int (*pz_msg_copy)(pz_msg_t *, pz_msg_t *);
static void *(*pz_msg_data)(pz_msg_t *);
static size_t (*pz_msg_size)(const pz_msg_t *);
static int (*pz_msg_more)(const pz_msg_t *);
static int (*pz_msg_send)(pz_msg_t *, void *, int);
static int (*pz_msg_recv)(pz_msg_t *, void *, int);
static int (*pz_poll)(pz_pollitem_t *, int, long);
static int (*pz_getsockopt)(void *, int, void *, size_t *);
static int (*pz_setsockopt)(void *, int, const void *, size_t);
static int (*pz_errno)(void);
static void (*pz_version)(int *, int *, int *);

static int pz_loaded = 0;

#define PZ_SYM(var, name)                                   \
    do {                                                    \
        *(void **)(&var) = dlsym(handle, name);             \
        if (var == NULL) { *missing = name; return -1; }    \
    } while (0)

/* Resolve every entry point from the object at `path` (already loaded by
 * pyzmq).  Returns 0, or -1 with *missing naming the first absent symbol. */
static int pz_load(const char *path, const char **missing)
{
    void *handle;
    if (pz_loaded) return 0;
    handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (handle == NULL) { *missing = dlerror(); return -1; }
    PZ_SYM(pz_msg_init, "zmq_msg_init");
    PZ_SYM(pz_msg_init_size, "zmq_msg_init_size");
    PZ_SYM(pz_msg_init_data, "zmq_msg_init_data");
    PZ_SYM(pz_msg_close, "zmq_msg_close");
    PZ_SYM(pz_msg_copy, "zmq_msg_copy");
    PZ_SYM(pz_msg_data, "zmq_msg_data");
    PZ_SYM(pz_msg_size, "zmq_msg_size");
    PZ_SYM(pz_msg_more, "zmq_msg_more");
    PZ_SYM(pz_msg_send, "zmq_msg_send");
    PZ_SYM(pz_msg_recv, "zmq_msg_recv");
    PZ_SYM(pz_poll, "zmq_poll");
    PZ_SYM(pz_getsockopt, "zmq_getsockopt");
    PZ_SYM(pz_setsockopt, "zmq_setsockopt");
    PZ_SYM(pz_errno, "zmq_errno");
    PZ_SYM(pz_version, "zmq_version");
    pz_loaded = 1;
    return 0;
}

#undef PZ_SYM
#endif
