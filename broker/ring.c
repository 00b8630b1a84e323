#include "ring.h"

#include <string.h>

bool ring_grow(void **slots, uint32_t *head, uint32_t count, uint32_t *cap, size_t size)
{
    uint32_t ncap = *cap ? *cap * 2 : 4;
    if (ncap < *cap)
        return false;
    uint8_t *n = malloc(size * ncap), *old = *slots;
    if (!n)
        return false;
    /* Unwrap: the oldest element goes to index 0. */
    uint32_t first = count < *cap - *head ? count : *cap - *head;
    if (count) {
        memcpy(n, old + (size_t)*head * size, (size_t)first * size);
        memcpy(n + (size_t)first * size, old, (size_t)(count - first) * size);
    }
    free(old);
    *slots = n;
    *head = 0;
    *cap = ncap;
    return true;
}
