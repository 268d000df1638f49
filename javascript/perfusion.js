// Perfusion tab: give the training job a task id and show its progress, loss and previews while it runs.
function perfusion_start_training() {
    var id = randomId();
    var info = gradioApp().getElementById('perfusion_train_progress');
    requestProgress(id, info, gradioApp().getElementById('perfusion_train_gallery'), function() {
        info.innerHTML = '';
    }, function(progress) {
        info.innerHTML = progress.textinfo || '';
    });
    var args = Array.from(arguments);
    args[0] = id;
    return args;
}
