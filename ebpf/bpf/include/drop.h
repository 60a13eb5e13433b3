/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Drop accounting: a per-CPU counter per reason (strait_drops) and a record
 * in the strait_events ring buffer for each drop or refused connect.
 */
#ifndef STRAIT_DROP_H
#define STRAIT_DROP_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "strait_abi.h"
#include "maps.h"

static __always_inline void strait_count_drop(__u32 reason)
{
	__u64 *count = bpf_map_lookup_elem(&strait_drops, &reason);

	if (count)
		*count += 1;
}

/*
 * Counts ev->reason and emits ev (stamped with the time). A full ring buffer
 * loses the event but never the count.
 */
static __always_inline void strait_drop_notify(struct strait_drop_event *ev)
{
	ev->ktime_ns = bpf_ktime_get_ns();
	strait_count_drop(ev->reason);
	bpf_ringbuf_output(&strait_events, ev, sizeof(*ev), 0);
}

#endif /* STRAIT_DROP_H */
