"""Tutorial 001's hand-written MNIST loop, as its author wrote it, plus the four lines marked `# vizkit`.

    python experiments/own_loop.py --epochs 10          # then: tensorboard --logdir runs
    python -m vizkit.features --layer conv2             # every vizkit command opens the run it leaves

The only other change to the tutorial: the command-line flags, so a test can run it on a slice of MNIST.
"""

import argparse

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from vizkit import Run  # vizkit

parser = argparse.ArgumentParser(description="tutorial 001's loop, logged by vizkit")
parser.add_argument("--epochs", type=int, default=10, help="epochs (default: 10, as the tutorial)")
parser.add_argument("--limit-train", type=int, default=0, help="train on the first N images, 0 = all (default: 0)")
parser.add_argument("--limit-test", type=int, default=0, help="test on the first N images, 0 = all (default: 0)")
parser.add_argument("--data-dir", default="data", help="torchvision's MNIST folder (default: data)")
parser.add_argument("--run-dir", default=None, help="vizkit's run directory (default: runs/<date>-<time>-Net)")
args = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])

batch_size = 64  # 设置批量大小
transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
# 根据MNIST的均值和标准差对数据集做一些处理
if __name__ == "__main__":  # (vizkit imports this file to rebuild Net: no data loading then)
    train_dataset = datasets.MNIST(args.data_dir, train=True, transform=transform, download=True)
    test_dataset = datasets.MNIST(args.data_dir, train=False, transform=transform, download=True)
    if args.limit_train:
        train_dataset = Subset(train_dataset, range(args.limit_train))
    if args.limit_test:
        test_dataset = Subset(test_dataset, range(args.limit_test))
    train_loader = DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(dataset=test_dataset, batch_size=batch_size, shuffle=True)


class Net(torch.nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = torch.nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = torch.nn.Conv2d(10, 20, kernel_size=5)
        self.pooling = torch.nn.MaxPool2d(kernel_size=2)
        self.fc1 = torch.nn.Linear(320, 50)  # 全连接层
        self.fc2 = torch.nn.Linear(50, 10)
        self.ReLU = torch.nn.ReLU()

    def forward(self, x):
        batch_size = x.size(0)
        x = self.ReLU(self.pooling(self.conv1(x)))  # 先卷积,再池化,再非线性化
        x = self.ReLU(self.pooling(self.conv2(x)))
        x = x.view(batch_size, -1)  # 展成一维向量,便于后续全连接层处理
        x = self.ReLU(self.fc1(x))
        x = self.fc2(x)  # 使用crossEntropyLoss时最后一层不能激活
        return x


net = Net()
device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  ###
net.to(device)  ###
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5)


def train(epoch):
    running_loss = 0.0
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)  ### 计算的张量迁移到显卡
        y_pred = net(data)
        loss = criterion(y_pred, target)
        optimizer.zero_grad()
        loss.backward()  # 反向传播
        optimizer.step()
        running_loss += loss.item()  # 采用了MINI_BATCH 损失要累加起来
        if batch_idx % 300 == 299:
            print("[%d, %5d] loss: %.3f" % (epoch + 1, batch_idx + 1, running_loss / 300))
            running_loss = 0.0
            # 每三百次计算一次平均损失


def Test():
    correct = 0
    total = 0
    with torch.no_grad():  # 测试集无需计算梯度,只是做测试,不对网络进行优化
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)  ###
            output = net(data)
            _, predicted = torch.max(output.data, 1)  # 找到预测值最大的类别
            total += target.size(0)
            correct += (predicted == target).sum().item()  # 统计预测正确的次数
    print("Accuracy of the network on the test images: %d %% [%d/%d]" % (100 * correct / total, correct, total))


if __name__ == "__main__":
    with Run(net, next(iter(test_loader))[0], (0.1307,), (0.3081,), run_dir=args.run_dir) as run:  # vizkit
        for epoch in range(0, args.epochs):
            train(epoch)
            Test()
            run.epoch(epoch + 1, val_loader=test_loader)  # vizkit
        run.evaluate(test_loader)  # vizkit
