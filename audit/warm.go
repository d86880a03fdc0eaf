package audit

// A warm pool hands out new memory that a background goroutine has
// already written to, so that the page faults of touching fresh memory —
// several microseconds each on a virtual machine — are taken off the
// append path, which holds the store's lock. One value is prepared ahead;
// if it is not ready yet, get allocates as usual.
type warm[T any] struct {
	alloc func() *T
	touch func(*T)
	ready chan *T
}

func newWarm[T any](alloc func() *T, touch func(*T)) *warm[T] {
	w := &warm[T]{alloc: alloc, touch: touch, ready: make(chan *T, 1)}
	go w.prepare()
	return w
}

func (w *warm[T]) prepare() {
	v := w.alloc()
	w.touch(v)
	w.ready <- v // never blocks: each prepare follows one receive
}

func (w *warm[T]) get() *T {
	select {
	case v := <-w.ready:
		go w.prepare()
		return v
	default:
		return w.alloc()
	}
}

// pageSize is the granularity at which fresh memory faults in.
const pageSize = 4096

func touchBytes(b *[]byte) {
	full := (*b)[:cap(*b)]
	for i := 0; i < len(full); i += pageSize {
		full[i] = 0
	}
}

func touchHashes(p *[memoryPageSize]Hash) {
	for i := 0; i < len(p); i += pageSize / len(Hash{}) {
		p[i] = Hash{}
	}
}

func touchRefs(p *[memoryPageSize]dataRef) {
	for i := 0; i < len(p); i += pageSize / 12 { // a dataRef is 12 bytes
		p[i] = dataRef{}
	}
}
