package cuda

import (
	"errors"
	"fmt"
	"slices"
)

// ErrInvalidRemap is wrapped by RemapPairs for moves it cannot turn into pairs.
var ErrInvalidRemap = errors.New("cuda: invalid gpu remap")

// RemapPairs builds the GPU pairs for CheckpointProcessRestore that move a
// process's memory from each GPU in moves' keys to the GPU it maps to.
//
// all must be every GPU the caller (the restoring process) sees. The driver
// (580, measured on 2xH200) refuses pairs that are not a bijection over those
// GPUs with CUDA_ERROR_INVALID_VALUE, even when the process was started with
// CUDA_VISIBLE_DEVICES naming one GPU: {GPU0->GPU1} fails where {GPU0->GPU1,
// GPU1->GPU0} works. So the result pairs every GPU in all, in all's order:
// moved GPUs go to their targets, each GPU displaced by a move goes to the
// source that the chain of moves reaching it started from (closing the
// chain into a cycle), and all others map to themselves.
//
// No moves, or only moves of GPUs onto themselves, return nil: restore in
// place, which needs no pairs and no r580 driver.
func RemapPairs(all []UUID, moves map[UUID]UUID) ([]GPUPair, error) {
	visible := make(map[UUID]bool, len(all))
	for _, u := range all {
		if u.IsZero() {
			return nil, fmt.Errorf("%w: zero uuid among visible gpus", ErrInvalidRemap)
		}
		if visible[u] {
			return nil, fmt.Errorf("%w: gpu %s listed twice among visible gpus", ErrInvalidRemap, u)
		}
		visible[u] = true
	}

	// Sorted for errors that do not depend on map order.
	sources := make([]UUID, 0, len(moves))
	for src := range moves {
		sources = append(sources, src)
	}
	slices.SortFunc(sources, func(a, b UUID) int { return slices.Compare(a[:], b[:]) })

	perm := make(map[UUID]UUID, len(moves))
	movedTo := make(map[UUID]UUID, len(moves)) // target -> source
	for _, src := range sources {
		dst := moves[src]
		if !visible[src] {
			return nil, fmt.Errorf("%w: gpu %s to move from is not among the %d visible gpus", ErrInvalidRemap, src, len(all))
		}
		if !visible[dst] {
			return nil, fmt.Errorf("%w: gpu %s to move to is not among the %d visible gpus", ErrInvalidRemap, dst, len(all))
		}
		if other, ok := movedTo[dst]; ok {
			return nil, fmt.Errorf("%w: gpus %s and %s both map to %s", ErrInvalidRemap, other, src, dst)
		}
		movedTo[dst] = src
		if src != dst {
			perm[src] = dst
		}
	}
	if len(perm) == 0 {
		return nil, nil
	}

	// Each chain of moves starts at a GPU nothing moves onto and ends at one
	// that does not move itself; send the end back to the start. Moves that
	// are already cycles have neither and stay as they are.
	mapping := make(map[UUID]UUID, len(all))
	for src, dst := range perm {
		mapping[src] = dst
	}
	for _, start := range all {
		if _, moved := perm[start]; !moved {
			continue
		}
		if _, reached := movedTo[start]; reached {
			continue // in the middle of a chain, or in a cycle
		}
		end := start
		for {
			next, ok := perm[end]
			if !ok {
				break
			}
			end = next
		}
		mapping[end] = start
	}

	pairs := make([]GPUPair, 0, len(all))
	for _, u := range all {
		n, ok := mapping[u]
		if !ok {
			n = u
		}
		pairs = append(pairs, GPUPair{Old: u, New: n})
	}
	return pairs, nil
}
