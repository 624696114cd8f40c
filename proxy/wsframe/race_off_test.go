//go:build !race

package wsframe

const raceOn = false
