// Merging a row of `GET /v1/conversations` into what the client already knows. The list is
// the truth, except where the client has seen newer things live since the list was computed:
// a newer message (keep its preview and unread count) or a newer read mark (never count
// messages as unread again that this device already read).

/**
 * The merged row. `cur` is the known row (or undefined), `row` the fetched one; `activity`
 * orders the list (ms; the last message's time, or a stand-in for empty conversations).
 */
export function mergeRow(cur, row, activity) {
  const read_seq = Math.max(cur?.read_seq ?? 0, row.read_seq);
  if (cur && cur.last_seq > row.last_seq) {
    // A message arrived after the list was computed: keep the live preview and count.
    return {
      ...cur,
      ...row,
      last_seq: cur.last_seq,
      last_message: cur.last_message,
      unread_count: cur.unread_count,
      read_seq,
      activity: Math.max(cur.activity, activity),
    };
  }
  let unread_count = row.unread_count;
  if (read_seq >= row.last_seq) unread_count = 0;
  else if (read_seq > row.read_seq) unread_count = Math.min(row.unread_count, cur.unread_count);
  return { ...row, read_seq, unread_count, activity: Math.max(activity, cur?.activity ?? -Infinity) };
}
