package server

import (
	"slices"
	"sync"

	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
)

// messageOverhead bounds what a stream message adds to its chunk of data:
// field tags and lengths, the offset, and the first message's metadata (file
// names are capped at 255 bytes, request ids at 128).
const messageOverhead = 4 << 10

// useBufferPool gives gRPC buffer pool tiers that fit stream messages.
// grpc-go's default pool has tiers of 32 KiB and then 1 MiB, and zeroes a
// buffer's whole capacity on every Get: a message of one 64 KiB chunk took
// a 1 MiB buffer, so 16 bytes were cleared per byte relayed. With a tier of
// each power-of-two chunk size plus messageOverhead, the clearing is about
// one byte per byte. The proto codec
// only uses the process-wide default pool, so New sets it, once per
// process, before its gRPC server starts.
func useBufferPool() { bufferPoolOnce.Do(setBufferPool) }

var bufferPoolOnce sync.Once

func setBufferPool() {
	sizes := []int{256, 4 << 10, 16 << 10, 32 << 10}
	for size := 1 << 10; size <= 4<<20; size <<= 1 {
		sizes = append(sizes, size+messageOverhead)
	}
	sizes = append(sizes, 1<<20)
	experimental.SetDefaultBufferPool(mem.NewTieredBufferPool(sortedUnique(sizes)...))
}

func sortedUnique(s []int) []int {
	slices.Sort(s)
	return slices.Compact(s)
}
