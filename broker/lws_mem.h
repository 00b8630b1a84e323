/*
 * lws_mem: libwebsockets' allocator (lws_set_allocator), so that its request
 * head buffers live apart from the heap.
 *
 * lws gives each connection whose request head it is reading a header table
 * ("ah struct", ~1 KiB) and a header buffer ("ah data", 4 KiB), freed once the
 * head is in. Taken from the heap, a burst of handshakes leaves those blocks
 * free between the connections that stay, in pages glibc cannot return: at
 * 10,000 connections set up 1,024 at a time, 2.25 KiB RSS per idle connection
 * instead of 1.91. Here they come from two fixed arrays of slots, mapped but
 * untouched until used, whose pages go back to the system (lws_mem_trim, from
 * the 1 s sweep) once no head is being read. Every other allocation of lws
 * goes to realloc/free as before.
 */
#ifndef GALE_LWS_MEM_H
#define GALE_LWS_MEM_H

#include <stdbool.h>
#include <stddef.h>

/**
 * Installs the allocator with room for `heads` request heads at once (lws's
 * max_http_header_pool) of `data_size` bytes each (its max_http_header_data).
 * Call once, before the first lws_create_context; heads past the room (lws
 * never asks for more) come from the heap. Returns false when the address
 * space cannot be reserved (lws then keeps its own allocator).
 */
bool lws_mem_install(size_t heads, size_t data_size);

/**
 * Returns the slots' pages to the system if no request head is held now. Not
 * on every release: a madvise and the page faults after it cost a handshake
 * ~25% more broker CPU (gale bench connect --concurrency 16).
 */
void lws_mem_trim(void);

/** Request heads held now (for tests). */
size_t lws_mem_heads_in_use(void);

#endif
