package app

import (
	"sync"

	"github.com/kybernate/kybernate/nodeagent/controller"
)

// freezerSet holds the freezer of each node whose pods without GPUs the agent suspends by
// freezing their containers (the real node, when containerd is reachable).
type freezerSet struct {
	mu sync.RWMutex
	m  map[string]controller.Freezer
}

var _ controller.Freezers = (*freezerSet)(nil)

func (s *freezerSet) Freezer(node string) (controller.Freezer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	f, ok := s.m[node]
	return f, ok
}

func (s *freezerSet) set(node string, f controller.Freezer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[node] = f
}
