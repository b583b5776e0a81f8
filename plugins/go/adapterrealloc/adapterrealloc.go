// Package adapterrealloc gives the WASI preview1 adapter an allocator of its
// own, so that a Go plugin can be pre-initialized with Wizer.
//
// A Go plugin is a WASI preview1 module turned into a component with the
// preview1 adapter, which allocates its state and its stack in the plugin's
// memory on its first WASI call, through the plugin's `cabi_realloc`, or
// through `cabi_realloc_adapter` when the plugin exports one (wit-component
// prefers it). Without this package that is the `cabi_realloc` of
// go.bytecodealliance.org/pkg, which allocates with `runtime.sbrk` before
// the Go runtime has started and from the garbage-collected heap after.
//
// Without Wizer the first WASI call comes from the runtime's own start-up,
// so the adapter's state is sbrk'd. A Wizer snapshot is taken without the
// adapter (it runs the core module), so in every instance the first WASI
// call comes later, from a running runtime: the adapter's state would then
// be a pinned heap object that is unpinned when the call returns, and the
// allocation itself makes a WASI call (pausing the adapter's clock) back
// into the adapter before its state exists. Every job trapped (`out of
// bounds memory access`); which of the two did it was not traced. This
// allocator always uses `runtime.sbrk`, as the start-up does: the state is
// never collected and no WASI call is made while it is allocated.
//
// Import it for its side effect: `import _ "wit_component/adapterrealloc"`.
package adapterrealloc

import "unsafe"

// sbrk is the runtime's page allocator: memory past the Go heap, never
// collected. Linking to it needs `-ldflags=-checklinkname=0`, as the
// go.bytecodealliance.org/pkg runtime package does.
//
//go:linkname sbrk runtime.sbrk
func sbrk(n uintptr) unsafe.Pointer

// cabiReallocAdapter is the adapter's allocator: fresh allocations only,
// which is all the adapter asks for (its state and its stack, once each
// per instance).
//
//go:wasmexport cabi_realloc_adapter
func cabiReallocAdapter(oldPointer unsafe.Pointer, oldSize, align, newSize uintptr) unsafe.Pointer {
	if oldPointer != nil || oldSize != 0 {
		panic("cabi_realloc_adapter: the adapter never reallocates")
	}
	raw := uintptr(sbrk(newSize + align))
	if raw == 0 {
		return nil
	}
	return unsafe.Pointer((raw + align - 1) &^ (align - 1))
}
