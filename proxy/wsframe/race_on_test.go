//go:build race

package wsframe

// raceOn: the race detector grows every stack, so stack sizes say nothing.
const raceOn = true
