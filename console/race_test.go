//go:build race

package console_test

// raceEnabled says the race detector is on, which makes the browser
// tests' logs slower to write and verify: they use smaller ones.
const raceEnabled = true
