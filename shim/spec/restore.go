package spec

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AnnotationCRIUConfig is runc's annotation naming a CRIU configuration file for the
// container's checkpoints and restores; CRIU lets its settings override runc's.
const AnnotationCRIUConfig = "org.criu.config"

// CRIURestoreConfig is the CRIU configuration of a restore: established TCP connections, file
// locks and external unix sockets come back as they were dumped (the agent dumps with all
// three), cgroups as cfg.ManageCgroupsMode says. runc's restore through containerd takes no
// such options, so they reach CRIU through runc's org.criu.config annotation.
func CRIURestoreConfig(cfg Config) []byte {
	return fmt.Appendf(nil, "# written by containerd-shim-kybernate-v1 for a restore\ntcp-established\nfile-locks\next-unix-sk\nmanage-cgroups=%s\n", cfg.ManageCgroupsMode)
}

// Restore points runc at the CRIU configuration file configFile (an absolute path).
func Restore(s *specs.Spec, configFile string) {
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[AnnotationCRIUConfig] = configFile
}
