package audit

// QueueLen returns how many appends wait for the group commit.
func (l *Log) QueueLen() int {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return len(l.queue)
}
