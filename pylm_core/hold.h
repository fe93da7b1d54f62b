/* Buffers lent to libzmq without a copy (zmq_msg_init_data).
 *
 * libzmq calls the free callback from its I/O thread, where Python may not
 * run.  The callback only pushes the hold onto a lock-free stack; the client
 * releases the Python buffers (with the GIL) the next time it sends, or when
 * it closes.
 */
#ifndef PYLM_HOLD_H
#define PYLM_HOLD_H

#include <Python.h>

typedef struct pz_hold {
    struct pz_hold *next;
    Py_buffer view;
} pz_hold;

static pz_hold *pz_released = NULL;
/* Payloads lent, and released again (counted for the tests, as
 * pz_batches_given/freed in wire.h). */
static uint64_t pz_payloads_lent = 0;
static uint64_t pz_payloads_released = 0;

static void pz_hold_free_cb(void *data, void *hint)
{
    pz_hold *h = (pz_hold *)hint;
    pz_hold *old = __atomic_load_n(&pz_released, __ATOMIC_ACQUIRE);
    (void)data;
    do {
        h->next = old;
    } while (!__atomic_compare_exchange_n(&pz_released, &old, h, 0,
                                          __ATOMIC_RELEASE, __ATOMIC_ACQUIRE));
}

static pz_hold *pz_take_released(void)
{
    return __atomic_exchange_n(&pz_released, NULL, __ATOMIC_ACQ_REL);
}

#endif
