package app

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kybernate/kybernate/nodeagent/thp"
)

// startTHP puts back the huge page settings an earlier agent left changed (whether or not
// this one opens windows) and, with --thp-window, gives the engines the window. An unusable
// state file keeps the window shut: opening it would overwrite the only record of the
// node's settings.
func (o *Options) startTHP(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	_, recoverErr := thp.Recover(ctx, o.THPDir, o.StateDir)
	if recoverErr != nil {
		logger.Error(recoverErr, "Putting back the THP settings an earlier agent changed failed")
	}
	if !o.THPWindow {
		return nil
	}
	if recoverErr != nil {
		logger.Info("THP window disabled until the state file is dealt with", "stateDir", o.StateDir)
		return nil
	}
	w, err := thp.New(o.thpConfig(), clock.RealClock{})
	if err != nil {
		return fmt.Errorf("--thp-window: %w", err)
	}
	cur, err := thp.Current(o.THPDir, thp.Enabled)
	if err != nil {
		return fmt.Errorf("--thp-window: %w", err)
	}
	logger.Info("THP window on: transparent huge pages are set to always while checkpoints run", "thpDir", o.THPDir, "enabled", cur, "defrag", o.THPWindowDefrag)
	o.hugePages = w
	return nil
}
